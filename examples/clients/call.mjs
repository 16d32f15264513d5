#!/usr/bin/env node
// Calls a falrt app through fal's queue API over HTTP, with nothing but Node's own fetch:
// submit, follow the status stream (server-sent events read from the response body), then
// fetch the result. Node 18 or later; no packages.
//
//   FALRT_URL=https://127.0.0.1:8443 FAL_KEY=KEY_ID:SECRET \
//   NODE_EXTRA_CA_CERTS=ca.pem node call.mjs local/hello '{"name": "world"}'
//
// Progress goes to stderr; stdout gets one JSON object:
// {"request_id", "statuses": ["IN_QUEUE", ..., "COMPLETED"], "logs": [messages], "result"}.
// Exits 1 when a call fails or the request completed with an error.

const [app, input = "{}"] = process.argv.slice(2);
const base = (process.env.FALRT_URL ?? "").replace(/\/+$/, "");
if (!app || !base) {
  console.error("usage: FALRT_URL=https://HOST:PORT [FAL_KEY=ID:SECRET] node call.mjs OWNER/APP[/PATH] [JSON]");
  process.exit(2);
}
const auth = process.env.FAL_KEY ? { Authorization: `Key ${process.env.FAL_KEY}` } : {};

async function call(url, init = {}) {
  const response = await fetch(url, { ...init, headers: { ...auth, ...init.headers } });
  if (!response.ok) {
    const body = await response.text();
    throw new Error(`${init.method ?? "GET"} ${url}: ${response.status} ${body}`);
  }
  return response;
}

// The events of a text/event-stream body, as parsed JSON, in order: each event's data lines
// joined with "\n"; comments (":" lines) and other fields ignored.
async function* serverSentEvents(body) {
  let buffer = "";
  let data = [];
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop(); // an unfinished line waits for the next chunk
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield JSON.parse(data.join("\n"));
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }
}

async function main() {
  const submitted = await (await call(`${base}/queue/${app}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: input,
  })).json();
  console.error(`submitted ${submitted.request_id}`);

  const statuses = [];
  const logs = []; // each event carries the lines logged since the previous one
  const stream = new URL(`${submitted.status_url}/stream`);
  stream.searchParams.set("logs", "1");
  const events = await call(stream, { headers: { Accept: "text/event-stream" } });
  for await (const status of serverSentEvents(events.body)) {
    if (statuses.at(-1) !== status.status) console.error(status.status);
    statuses.push(status.status);
    for (const entry of status.logs ?? []) {
      logs.push(entry.message.trimEnd());
      console.error(`  log: ${entry.message.trimEnd()}`);
    }
    if (status.status === "COMPLETED") break;
  }

  const result = await (await call(submitted.response_url)).json();
  console.log(JSON.stringify({ request_id: submitted.request_id, statuses, logs, result }));
}

main().catch((error) => {
  console.error(error.message ?? error);
  process.exit(1);
});
