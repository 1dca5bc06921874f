// Validates Kubernetes objects with the kubernetes-models schemas (core kinds and the
// prometheus-operator CRDs). Input on stdin: a JSON list of objects. Output: one line per
// object, "ok KIND/NAME" or "error KIND/NAME: MESSAGE"; exit 1 when any failed.
import { readFileSync } from "node:fs";

const PACKAGES = { "monitoring.coreos.com": "@kubernetes-models/prometheus-operator" };

async function model(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const path = PACKAGES[group]
    ? `${PACKAGES[group]}/${group}/${version}/${kind}`
    : `kubernetes-models/${group ? `${group}/` : ""}${version}/${kind}`;
  return (await import(path))[kind];
}

let failed = 0;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${object.kind}/${object.metadata?.name}`;
  try {
    const Model = await model(object.apiVersion, object.kind);
    new Model(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`error ${name}: ${String(error.message ?? error).replaceAll("\n", " ")}`);
  }
}
process.exit(failed ? 1 : 0);
