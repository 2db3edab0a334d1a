// npm fossil-delta (the reference encoder Centrifugo's clients use) driven by a test.
//
// Usage: node fossil_delta.mjs < cases.json
// stdin: a JSON array of {"source": b64, "target": b64, "delta": b64} (delta: ours).
// stdout: a JSON array, one {"created": b64, "applied": b64 | null, "error": str | null}
// per case: fossil-delta's createDelta(source, target), and its applyDelta(source, delta).
import { applyDelta, createDelta } from "fossil-delta";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const bytes = (b64) => new Uint8Array(Buffer.from(b64, "base64"));
const b64 = (array) => Buffer.from(array).toString("base64");
const results = cases.map(({ source, target, delta }) => {
  const created = b64(createDelta(bytes(source), bytes(target)));
  try {
    return { created, applied: b64(applyDelta(bytes(source), bytes(delta))), error: null };
  } catch (error) {
    return { created, applied: null, error: String(error) };
  }
});
process.stdout.write(JSON.stringify(results));
