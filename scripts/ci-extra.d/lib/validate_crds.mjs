// Validates the KEDA and prometheus-operator objects of rendered kustomize output against
// their CRD schemas: npm @kubernetes-models/keda@0.4.2 and @kubernetes-models/prometheus-operator@6.0.0
// (installed by lib/tools.sh into target/tools/node). Each object is constructed with its
// model class and `.validate()` is called (it throws on any schema violation).
// Usage: node validate_crds.mjs NODE_DIR rendered.yaml...
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [nodeDirArg, ...files] = process.argv.slice(2);
const nodeDir = path.resolve(nodeDirArg);
const req = createRequire(path.join(nodeDir, "package.json"));
const yaml = req("js-yaml");
const keda = req("@kubernetes-models/keda/keda.sh/v1alpha1");
const promOpPath = path.join(nodeDir, "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const promOp = await import(pathToFileURL(promOpPath).href);

const models = {
  "keda.sh/v1alpha1": { ScaledObject: keda.ScaledObject, TriggerAuthentication: keda.TriggerAuthentication, ScaledJob: keda.ScaledJob },
  "monitoring.coreos.com/v1": { PodMonitor: promOp.PodMonitor, ServiceMonitor: promOp.ServiceMonitor, PrometheusRule: promOp.PrometheusRule },
};

let failed = 0;
let checked = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || !models[doc.apiVersion]) continue;
    const Model = models[doc.apiVersion][doc.kind];
    const where = `${path.basename(file)}: ${doc.kind}/${doc.metadata?.name}`;
    if (!Model) {
      console.error(`  - ${where}: no schema model for ${doc.apiVersion} ${doc.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
      checked++;
      console.log(`  ok ${where}`);
    } catch (e) {
      failed++;
      console.error(`  - ${where}: ${e.message}`);
      for (const d of e.errors ?? []) console.error(`      ${d.instancePath ?? d.dataPath ?? ""} ${d.message}`);
    }
  }
}
if (failed) {
  console.error(`${failed} KEDA/prometheus-operator objects fail their schema`);
  process.exit(1);
}
if (!checked) {
  console.error("no KEDA/prometheus-operator objects found: nothing validated");
  process.exit(1);
}
console.log(`${checked} KEDA/prometheus-operator objects valid against their CRD schemas`);
