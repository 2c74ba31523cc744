// Peer benchmark: the idempotency utility of Powertools for AWS Lambda (TypeScript), with its
// Redis persistence layer (CachePersistenceLayer over @redis/client), run over a trivial handler
// on the same redis-server and the same stream as idem's benchmarks (bench/bench_util.h): 36-byte
// random UUID ids, five new then one duplicate, the duplicate repeating the first id of the group
// 128 groups back.
//
// Outside Lambda it uses the documented pieces only: makeIdempotent() over a record-processing
// function (not a Lambda handler), IdempotencyConfig with eventKeyJmesPath 'id', and
// config.registerLambdaContext() with a stand-in context whose getRemainingTimeInMillis() is
// 30 s, so that, like idem's 30 s lease, each claim records an in-progress expiry.
//
// Patterns: 'sequential' (one message at a time) and 'inflight64' (64 messages in flight on
// the one client connection, which pipelines their commands). Prints one JSON line per pattern.
//
//   node powertools_bench.mjs --port 26479 [--seconds 3] [--patterns sequential,inflight64]
import { randomBytes } from 'node:crypto';
import { createClient } from '@redis/client';
import { IdempotencyConfig, makeIdempotent } from '@aws-lambda-powertools/idempotency';
import { CachePersistenceLayer } from '@aws-lambda-powertools/idempotency/cache';

const GROUP = 6;
const LOOKBACK = 128;
const PAYLOAD = { order_id: 'A-1029', amount_cents: 4200, currency: 'EUR', kind: 'order.paid' };

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 6379, seconds: 3, warmup: 0.5,
                 patterns: ['sequential', 'inflight64'] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--host') opts.host = value;
    else if (flag === '--port') opts.port = Number(value);
    else if (flag === '--seconds') opts.seconds = Number(value);
    else if (flag === '--warmup') opts.warmup = Number(value);
    else if (flag === '--patterns') opts.patterns = value.split(',');
    else throw new Error(`unknown flag ${flag}`);
  }
  return opts;
}

function uuid() {
  const b = randomBytes(16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The same stream as bench/bench_util.cc's MessageStream.
class MessageStream {
  #position = 0;
  #heads = new Array(LOOKBACK);
  #lookback = '';

  next() {
    const group = Math.floor(this.#position / GROUP);
    const slot = group % LOOKBACK;
    const inGroup = this.#position % GROUP;
    this.#position++;
    if (inGroup === GROUP - 1) return { id: this.#lookback, payload: PAYLOAD };
    const id = uuid();
    if (inGroup === 0) {
      this.#lookback = group >= LOOKBACK ? this.#heads[slot] : id;
      this.#heads[slot] = id;
    }
    return { id, payload: PAYLOAD };
  }
}

async function run(processRecord, counter, pattern, seconds) {
  const stream = new MessageStream();
  const inflight = pattern === 'inflight64' ? 64 : 1;
  let msgs = 0;
  let errors = 0;
  const deadline = performance.now() + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      try {
        await processRecord(stream.next());
      } catch (error) {
        // A duplicate of a message still in flight is refused (IdempotencyAlreadyInProgressError):
        // an outcome, as idem's kInProgress is. Anything else is counted and reported.
        if (error?.name !== 'IdempotencyAlreadyInProgressError') errors++;
      }
      msgs++;
    }
  };
  const handledBefore = counter.handled;
  const start = performance.now();
  await Promise.all(Array.from({ length: inflight }, worker));
  const elapsed = (performance.now() - start) / 1000;
  return { msgs, seconds: elapsed, errors, handled: counter.handled - handledBefore };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const client = await createClient({ socket: { host: opts.host, port: opts.port } }).connect();
  const persistenceStore = new CachePersistenceLayer({ client });
  const config = new IdempotencyConfig({ eventKeyJmesPath: 'id' });
  config.registerLambdaContext({ getRemainingTimeInMillis: () => 30_000 });
  const counter = { handled: 0 };
  const processRecord = makeIdempotent(
    async (record) => {
      counter.handled++;
      return { ok: true };
    },
    { persistenceStore, config, keyPrefix: 'powertools-bench' },
  );

  for (const pattern of opts.patterns) {
    await run(processRecord, counter, pattern, opts.warmup);
    const { msgs, seconds, errors, handled } =
      await run(processRecord, counter, pattern, opts.seconds);
    // `handled` close to 5/6 of `msgs` shows that duplicates were recognised.
    console.log(JSON.stringify({
      name: 'powertools', pattern, msgs, seconds, msgs_per_s: msgs / seconds, handled, errors,
    }));
    if (errors > 0) process.exitCode = 1;
  }
  await client.quit();
}

await main();
