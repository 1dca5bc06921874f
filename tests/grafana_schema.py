"""The dashboards as TypeScript literals typed with Grafana 11's own schema (npm @grafana/schema).

`tsc --noEmit` over the file this writes checks every dashboard against `Dashboard` and every
panel against its plugin's `Options` and `FieldConfig` (stat, timeseries, heatmap, table): a missing
field, an unknown one (object literals get TypeScript's excess-property check) or a value
outside an enum is an error naming the dashboard, the panel and the field. JSON imported as a
module would not do: TypeScript widens its strings and skips the excess-property check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_CHECK = ROOT / "dashboards" / "schema-check"
TSC = SCHEMA_CHECK / "node_modules" / "typescript" / "bin" / "tsc"
RAW = "@grafana/schema/dist/esm/raw/composable"
#: Panel type -> the module of its `Options` (and `FieldConfig`, the type of `custom`, if it has one).
PLUGINS = {
    "stat": (f"{RAW}/stat/panelcfg/x/StatPanelCfg_types.gen", False),
    "timeseries": (f"{RAW}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "heatmap": (f"{RAW}/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen", True),
    "table": (f"{RAW}/table/panelcfg/x/TablePanelCfg_types.gen", True),
}

PRELUDE = """\
import type * as schema from '@grafana/schema';
{imports}

// Grafana's string enums as the plain strings the JSON holds: `${{E}}` is the union of their values.
type Plain<T> = T extends string ? `${{T}}`
  : T extends number | boolean | null | undefined ? T
  : T extends Array<infer U> ? Array<Plain<U>>
  : T extends object ? {{ [K in keyof T]: Plain<T[K]> }}
  : T;
// The Prometheus data source's annotation fields, which the schema leaves open ("TODO.. this should
// just be a normal query target"): the query in `target`, the formats beside it.
type PrometheusAnnotation = Omit<schema.AnnotationQuery, 'target'> & {{
  target?: {{ expr: string; interval?: string; refId: string }};
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}};
type Dashboard = Omit<schema.Dashboard, 'annotations'> & {{
  annotations?: {{ list?: Array<schema.AnnotationQuery | PrometheusAnnotation> }};
}};
type Typed<Options, Custom> = Omit<schema.Panel, 'options' | 'fieldConfig'> & {{
  options: Options;
  fieldConfig: {{
    defaults: Omit<schema.FieldConfig, 'custom'> & {{ custom?: Custom }};
    overrides: schema.FieldConfigSource['overrides'];
  }};
}};
"""


def identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def typescript(boards: dict[str, dict]) -> str:
    """One .ts module: each dashboard `satisfies` Dashboard, each panel its plugin's types."""
    imports = "\n".join(f"import type * as {kind} from '{module}';" for kind, (module, _) in PLUGINS.items())
    out = [PRELUDE.format(imports=imports)]
    for name, board in sorted(boards.items()):
        ident = identifier(Path(name).stem)
        out.append(f"// {name}\nexport const {ident} = {json.dumps(board, indent=2)} satisfies Plain<Dashboard>;\n")
        for panel in board["panels"]:
            kind = panel["type"]
            if kind == "row":
                continue
            assert kind in PLUGINS, f"{name}: no schema for panel type {kind}"
            custom = f"{kind}.FieldConfig" if PLUGINS[kind][1] else "never"
            out.append(f"// {name}: {panel['title']}\n"
                       f"export const {ident}_panel_{panel['id']} = {json.dumps(panel, indent=2)} "
                       f"satisfies Plain<Typed<{kind}.Options, {custom}>>;\n")
    return "\n".join(out)


def tsconfig(source: Path) -> dict:
    """Strict, no output, types resolved from dashboards/schema-check/node_modules."""
    modules = str(SCHEMA_CHECK / "node_modules")
    return {
        "compilerOptions": {
            "strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
            "moduleResolution": "bundler", "skipLibCheck": True, "types": [],
            "baseUrl": str(source.parent),
            "paths": {"@grafana/schema": [f"{modules}/@grafana/schema"],
                      "@grafana/schema/*": [f"{modules}/@grafana/schema/*"]},
            "typeRoots": [f"{modules}/@types"],
        },
        "files": [str(source)],
    }
