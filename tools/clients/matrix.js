#!/usr/bin/env node
// The client matrix, Node edition: the same short script as matrix.py, with node-redis
// (RESP2 or RESP3) or ioredis.
//
// Usage: node matrix.js node-redis|ioredis 2|3 PORT RUN
// Prints "OK <client> <version> proto=<p>" and exits 0 when every step passed.
// With MATRIX_PASSWORD set, every connection authenticates as the default user with it, and
// the admin connection (TRANSFER) as `admin` with MATRIX_ADMINPASS.
'use strict';

const [lib, proto, portText, run] = process.argv.slice(2);
const port = Number(portText);
const k = (name) => `${run}:${name}`;

function check(cond, what) {
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
}

// An application's retry: kvraft answers -TRYAGAIN or -CLUSTERDOWN while leadership moves.
// `idempotent` commands (SET of a fixed value) are also resent on -UNKNOWN (a write forwarded
// by a follower whose leader changed before it answered: applying it twice changes nothing).
async function retry(fn, idempotent = false) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const again = idempotent ? /TRYAGAIN|CLUSTERDOWN|UNKNOWN/ : /TRYAGAIN|CLUSTERDOWN/;
      if (attempt >= 40 || !again.test(String(e && e.message))) throw e;
      await new Promise((r) => setTimeout(r, Math.min(500, 20 * 2 ** attempt)));
    }
  }
}

// A thin common face over both libraries.
async function connect(host, p, admin = false) {
  const password = admin ? process.env.MATRIX_ADMINPASS : process.env.MATRIX_PASSWORD;
  const auth = process.env.MATRIX_PASSWORD ? { password, ...(admin ? { username: 'admin' } : {}) } : {};
  if (lib === 'ioredis') {
    const Redis = require('ioredis');
    const c = new Redis({
      host, port: p, lazyConnect: true, maxRetriesPerRequest: 40, ...auth,
      // ioredis's own retry: reconnect and resend the command on these errors.
      reconnectOnError: (err) => (/TRYAGAIN|CLUSTERDOWN/.test(err.message) ? 2 : false),
    });
    await c.connect();
    return {
      version: require('ioredis/package.json').version,
      call: (...a) => c.call(...a.map(String)),
      set: (key, v) => retry(() => c.set(key, v), true),
      get: (key) => c.get(key),
      incr: (key) => retry(() => c.incr(key)),
      mget: (keys) => c.mget(keys),
      del: (keys) => c.del(keys),
      exists: (keys) => c.exists(keys),
      mset: (obj) => c.mset(obj),
      multi: (key) => c.multi().set(key, 'x').incr(key + '2').exec(),
      pipelineSet: async (pairs) => (await c.pipeline(pairs.map(([a, b]) => ['set', a, b])).exec()).map(([e, r]) => e || r),
      pipelineGet: async (keys) => (await c.pipeline(keys.map((a) => ['get', a])).exec()).map(([e, r]) => e || r),
      scan: (match) => new Promise((resolve, reject) => {
        const seen = [];
        c.scanStream({ match, count: 500 })
          .on('data', (batch) => seen.push(...batch))
          .on('end', () => resolve(seen))
          .on('error', reject);
      }),
      info: async (section) => String(await c.info(section)),
      quit: () => c.quit(),
    };
  }
  const { createClient } = require('redis');
  const c = createClient({ socket: { host, port: p }, RESP: Number(proto), ...auth });
  c.on('error', () => {});
  await c.connect();
  return {
    version: require('redis/package.json').version,
    call: (...a) => c.sendCommand(a.map(String)),
    set: (key, v) => retry(() => c.set(key, String(v)), true),
    get: (key) => c.get(key),
    incr: (key) => retry(() => c.incr(key)),
    mget: (keys) => c.mGet(keys),
    del: (keys) => c.del(keys),
    exists: (keys) => c.exists(keys),
    mset: (obj) => c.mSet(obj),
    multi: (key) => c.multi().set(key, 'x').incr(key + '2').exec(),
    // node-redis pipelines every command issued in the same tick.
    pipelineSet: (pairs) => Promise.all(pairs.map(([a, b]) => c.set(a, String(b)))),
    pipelineGet: (keys) => Promise.all(keys.map((a) => c.get(a))),
    scan: async (match) => {
      const seen = [];
      for await (const batch of c.scanIterator({ MATCH: match, COUNT: 500 })) {
        seen.push(...(Array.isArray(batch) ? batch : [batch]));
      }
      return seen;
    },
    info: async (section) => String(await c.info(section)),
    quit: () => c.quit(),
  };
}

function parseInfo(text) {
  const out = {};
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

async function main() {
  const r = await connect('127.0.0.1', port);
  // 1. The basic commands.
  check((await r.call('PING')) === 'PONG', 'PING');
  check((await r.set(k('a'), '1')) === 'OK', 'SET');
  check((await r.get(k('a'))) === '1', 'GET');
  check((await r.incr(k('n'))) === 1 && (await r.incr(k('n'))) === 2, 'INCR');
  const m = await r.mget([k('a'), k('n'), k('missing')]);
  check(m[0] === '1' && m[1] === '2' && m[2] === null, `MGET ${JSON.stringify(m)}`);
  check((await r.del([k('a'), k('n'), k('missing')])) === 2, 'DEL');
  // A MULTI/EXEC transaction runs whole (ioredis answers [err, reply] pairs).
  const res = (await r.multi(k('tx'))).map((x) => (Array.isArray(x) ? x[0] || x[1] : x));
  check(res[0] === 'OK' && res[1] === 1, `MULTI/EXEC ${JSON.stringify(res)}`);
  check((await r.get(k('tx'))) === 'x', 'MULTI/EXEC applied its SET');

  // 2. A pipeline of 1,000 commands.
  const idx = [...Array(1000).keys()];
  const sets = await r.pipelineSet(idx.map((i) => [k(`p:${i}`), i]));
  check(sets.every((x) => x === 'OK'), 'pipelined SETs');
  const gets = await r.pipelineGet(idx.map((i) => k(`p:${i}`)));
  check(gets.every((x, i) => x === String(i)), 'pipelined GETs');

  // 3. SCAN over 10,000 keys: every key exactly once.
  for (let base = 0; base < 10000; base += 1000) {
    const obj = {};
    for (let i = base; i < base + 1000; i++) obj[k(`s:${i}`)] = 'v';
    await r.mset(obj);
  }
  const seen = await r.scan(k('s:*'));
  check(seen.length === 10000 && new Set(seen).size === 10000,
    `SCAN saw ${seen.length} keys, ${new Set(seen).size} distinct`);

  // 4. 50 concurrent users, each on its own connection.
  const users = await Promise.all([...Array(50).keys()].map(() => connect('127.0.0.1', port)));
  await Promise.all(users.map(async (u, i) => {
    for (let j = 0; j < 20; j++) await u.incr(k('pool'));
    await u.set(k(`user:${i}`), i);
  }));
  await Promise.all(users.map((u) => u.quit()));
  check((await r.get(k('pool'))) === '1000', 'pool counter');

  // 5. A leader change in the middle of a stream of writes, ridden out by the retry.
  const info = parseInfo(await r.info('raft'));
  const leader = Number(info.leader_id);
  const target = info.voters.split(',').map(Number).find((v) => v !== leader);
  const [lhost, lport] = [info.leader_client_addr.replace(/:\d+$/, ''), Number(info.leader_client_addr.split(':').pop())];
  const admin = await connect(lhost, lport, true);
  for (let i = 0; i < 200; i++) {
    if (i === 50) check((await admin.call('TRANSFER', target)) === 'OK', 'TRANSFER');
    check((await r.set(k(`lc:${i}`), i)) === 'OK', `SET during the leader change (${i})`);
  }
  const after = await r.mget(idx.slice(0, 200).map((i) => k(`lc:${i}`)));
  check(after.every((x, i) => x === String(i)), 'every write of the leader change is there');
  // The leader did change (poll with a deadline: the node learns of it within an election).
  const deadline = Date.now() + 20000;
  for (;;) {
    const now = Number(parseInfo(await r.info('raft')).leader_id);
    if (now !== 0 && now !== leader) break;
    check(Date.now() < deadline, `the leader never moved from ${leader}`);
    await new Promise((res) => setTimeout(res, 50));
  }
  await admin.quit();
  await r.quit();
  console.log(`OK ${lib} ${r.version} proto=${lib === 'ioredis' ? 2 : proto}`);
}

main().catch((e) => {
  console.error(`FAILED: ${e && e.stack}`);
  process.exit(1);
});
