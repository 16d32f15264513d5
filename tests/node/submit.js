// A falrt client written from proto/ alone with Node's grpc-js: over TLS, verified against
// a CA file, with an API key sent as call credentials. Submits a request, watches it to
// COMPLETED, fetches the result and prints {"request_id", "statuses", "output"} as JSON.
//
// usage: node submit.js HOST:PORT CA_FILE KEY ENDPOINT_ID INPUT_JSON
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, caFile, key, endpointId, input] = process.argv.slice(2);
const definition = protoLoader.loadSync("falrt/v1/queue.proto", {
  includeDirs: [path.resolve(__dirname, "../../proto")],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const falrt = grpc.loadPackageDefinition(definition).falrt.v1;

const apiKey = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
  const metadata = new grpc.Metadata();
  metadata.add("authorization", `Key ${key}`);
  callback(null, metadata);
});
const credentials = grpc.credentials.combineChannelCredentials(
  grpc.credentials.createSsl(fs.readFileSync(caFile)), apiKey);
const queue = new falrt.Queue(address, credentials);

function call(method, request) {
  return new Promise((resolve, reject) => {
    queue[method](request, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

function watch(requestId) {
  return new Promise((resolve, reject) => {
    const statuses = [];
    const stream = queue.Watch({ request_id: requestId, with_logs: false });
    stream.on("data", (update) => statuses.push(update.state.status));
    stream.on("error", reject);
    stream.on("end", () => resolve(statuses));
  });
}

async function main() {
  const submitted = await call("Submit", {
    endpoint_id: endpointId,
    input: { data: Buffer.from(input), content_type: "application/json" },
  });
  const statuses = await watch(submitted.request_id);
  const result = await call("GetResult", { request_id: submitted.request_id });
  const output = JSON.parse(Buffer.from(result.output.data).toString());
  console.log(JSON.stringify({ request_id: submitted.request_id, statuses, output }));
  queue.close();
}

main().catch((error) => {
  console.error(`${error.code}: ${error.details || error.message}`);
  process.exit(1);
});
