// Enqueue one dispatch from Node with celery-node (npm install celery-node), wait for its
// outcome and exit with its exit code.
//   REDIS_URL=redis://127.0.0.1:6379/0 PAYLOAD_REF='data:,{"source":"a.mov"}' \
//     node celery_node.js video-encode profile=720p
const { randomUUID } = require("crypto");
const celery = require("celery-node");

const url = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
// The third argument is the queue: dispatchq's, not Celery's default "celery".
const client = celery.createClient(url, url, process.env.DISPATCHQ_QUEUE || "dispatchq");
const [jobId, ...pairs] = process.argv.slice(2);
const meta = Object.fromEntries(pairs.map((pair) => pair.split(/=(.*)/s).slice(0, 2)));
const request = { request_id: randomUUID(), job_id: jobId, meta };
// A payload goes by reference (README, "Python API": data:, blob:, file://, http(s)://).
if (process.env.PAYLOAD_REF) request.payload_ref = process.env.PAYLOAD_REF;
// The task ID is the request ID: sendTask takes it as its last argument.
const result = client.sendTask("dispatchq.dispatch", [], request, request.request_id);
result.get(60000).then((outcome) => {
  console.log(JSON.stringify({ request_id: request.request_id, ...outcome }));
  client.disconnect();
  process.exitCode = outcome.exit_code;
});
