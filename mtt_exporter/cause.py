"""ITU-T Q.850 cause values: names, classes and the leg-outcome rule, as data."""

from __future__ import annotations

from enum import StrEnum

#: Causes are 7-bit values.
CAUSE_MAX = 127
#: Label value for a cause that is missing or not an integer 0..127.
UNKNOWN = "unknown"

#: Q.850 cause value -> name. Values not listed are valid but unassigned.
NAMES: dict[int, str] = {
    0: "Not defined",
    1: "Unallocated number",
    2: "No route to transit network",
    3: "No route to destination",
    4: "Send special information tone",
    5: "Misdialled trunk prefix",
    6: "Channel unacceptable",
    7: "Call awarded in established channel",
    8: "Preemption",
    9: "Preemption, circuit reserved",
    14: "QoR: ported number",
    16: "Normal call clearing",
    17: "User busy",
    18: "No user responding",
    19: "No answer from user",
    20: "Subscriber absent",
    21: "Call rejected",
    22: "Number changed",
    23: "Redirection to new destination",
    24: "Call rejected due to feature at destination",
    25: "Exchange routing error",
    26: "Non-selected user clearing",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    30: "Response to STATUS ENQUIRY",
    31: "Normal, unspecified",
    34: "No circuit/channel available",
    38: "Network out of order",
    39: "Permanent frame mode connection out of service",
    40: "Permanent frame mode connection operational",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    43: "Access information discarded",
    44: "Requested circuit/channel not available",
    46: "Precedence call blocked",
    47: "Resource unavailable, unspecified",
    49: "Quality of service not available",
    50: "Requested facility not subscribed",
    53: "Outgoing calls barred within CUG",
    55: "Incoming calls barred within CUG",
    57: "Bearer capability not authorized",
    58: "Bearer capability not presently available",
    62: "Inconsistent outgoing access and subscriber class",
    63: "Service or option not available, unspecified",
    65: "Bearer capability not implemented",
    66: "Channel type not implemented",
    69: "Requested facility not implemented",
    70: "Only restricted digital bearer capability available",
    79: "Service or option not implemented, unspecified",
    81: "Invalid call reference value",
    82: "Identified channel does not exist",
    83: "Suspended call exists, call identity does not",
    84: "Call identity in use",
    85: "No call suspended",
    86: "Call with requested identity has been cleared",
    87: "User not member of CUG",
    88: "Incompatible destination",
    90: "Non-existent CUG",
    91: "Invalid transit network selection",
    95: "Invalid message, unspecified",
    96: "Mandatory information element is missing",
    97: "Message type non-existent or not implemented",
    98: "Message not compatible with call state or not implemented",
    99: "Information element non-existent or not implemented",
    100: "Invalid information element contents",
    101: "Message not compatible with call state",
    102: "Recovery on timer expiry",
    103: "Parameter non-existent or not implemented, passed on",
    110: "Message with unrecognized parameter, discarded",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}

#: Name shown for an assigned-but-unlisted value and for "unknown".
UNLISTED_NAME = "Unlisted cause"
UNKNOWN_NAME = "Unknown cause"


class CauseClass(StrEnum):
    """Q.850 cause class: the top three bits of the 7-bit value."""

    NORMAL = "normal"
    RESOURCE_UNAVAILABLE = "resource_unavailable"
    SERVICE_UNAVAILABLE = "service_unavailable"
    NOT_IMPLEMENTED = "not_implemented"
    INVALID_MESSAGE = "invalid_message"
    PROTOCOL_ERROR = "protocol_error"
    INTERWORKING = "interworking"
    UNKNOWN = "unknown"


_CLASS_BY_BITS = (
    CauseClass.NORMAL,
    CauseClass.NORMAL,
    CauseClass.RESOURCE_UNAVAILABLE,
    CauseClass.SERVICE_UNAVAILABLE,
    CauseClass.NOT_IMPLEMENTED,
    CauseClass.INVALID_MESSAGE,
    CauseClass.PROTOCOL_ERROR,
    CauseClass.INTERWORKING,
)


class LegOutcome(StrEnum):
    """How one forwarding leg (one `o` to one redirect number) ended."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    SUBSCRIBER_ABSENT = "subscriber_absent"
    NOT_SELECTED = "not_selected"
    ADDRESS_ERROR = "address_error"
    ABANDONED = "abandoned"
    NETWORK_FAILURE = "network_failure"
    EXPIRED = "expired"


_OUTCOME_BY_CAUSE: dict[int, LegOutcome] = {
    17: LegOutcome.BUSY,
    18: LegOutcome.NO_ANSWER,
    19: LegOutcome.NO_ANSWER,
    20: LegOutcome.SUBSCRIBER_ABSENT,
    21: LegOutcome.REJECTED,
    24: LegOutcome.REJECTED,
    26: LegOutcome.NOT_SELECTED,
    1: LegOutcome.ADDRESS_ERROR,
    4: LegOutcome.ADDRESS_ERROR,
    5: LegOutcome.ADDRESS_ERROR,
    22: LegOutcome.ADDRESS_ERROR,
    23: LegOutcome.ADDRESS_ERROR,
    28: LegOutcome.ADDRESS_ERROR,
}
_NORMAL_CLEARING = frozenset({16, 31})


def cause_class(cause: int | None) -> CauseClass:
    """Class of a cause value; None (unknown) maps to CauseClass.UNKNOWN."""
    if cause is None:
        return CauseClass.UNKNOWN
    return _CLASS_BY_BITS[cause >> 4]


def cause_name(cause: int | None) -> str:
    """Q.850 name of a cause value, a fixed fallback for unlisted and unknown."""
    if cause is None:
        return UNKNOWN_NAME
    return NAMES.get(cause, UNLISTED_NAME)


def cause_label(cause: int | None) -> str:
    """Label value for a cause: "0".."127" or "unknown"."""
    return UNKNOWN if cause is None else str(cause)


def unanswered_outcome(cause: int | None, side: str | None) -> LegOutcome:
    """Outcome of a leg that ended without an answer (`h` and no `s`)."""
    if cause in _NORMAL_CLEARING:
        return LegOutcome.ABANDONED if side == "A" else LegOutcome.NO_ANSWER
    if cause is None:
        return LegOutcome.NETWORK_FAILURE
    return _OUTCOME_BY_CAUSE.get(cause, LegOutcome.NETWORK_FAILURE)
