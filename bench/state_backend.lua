-- wrk script for bench/state_backend.py: one notification per request, o, s, h of many
-- calls interleaved (a call's next event comes SLOTS requests later, as in real traffic
-- where a call's events are seconds apart); call ids unique per thread and run.
local SLOTS = 1000
local CODES = {"o", "s", "h"}
local counter = 0
local prefix
local thread_id = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

init = function(args)
  prefix = string.format("%s-%d", args[1] or "run", tid or 0)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  local slot = counter % SLOTS
  local round = math.floor(counter / SLOTS)
  counter = counter + 1
  local step = round % 3
  local call = math.floor(round / 3) * SLOTS + slot
  local event = string.format('{"type":"%s"', CODES[step + 1])
  if step == 2 then event = event .. ',"side":"B","cause":16' end
  local body = string.format(
    '{"h323_conf_id":"%s-%d","event":%s},"redirect_number":"79000000001","numberA":"79154368886","date_time":%d}',
    prefix, call, event, 1767225600 + step * 10)
  return wrk.format(nil, "/notify", nil, body)
end
