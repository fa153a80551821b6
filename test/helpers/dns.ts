// A DNS server and client of the tests' own, run inside test pods: the
// server answers each query with the rcode its name asks for
// (<rcode>-<n>.test, e.g. nxdomain-3.test; drop-* gets no answer) after a
// fixed delay, over UDP and TCP on IPv4 and IPv6; the client sends queries
// one at a time and reports the rcodes it got back (the tests' oracle).
//   node dns.js serve PORT DELAY_MS
//   node dns.js query SERVER PORT udp|tcp QTYPE NAME... (prints JSON)
import dgram from 'node:dgram';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const rcodes: Readonly<Record<string, number>> = { noerror: 0, formerr: 1, servfail: 2, nxdomain: 3, notimp: 4, refused: 5, yxdomain: 6 };
export const qtypes: Readonly<Record<string, number>> = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, ANY: 255, CAA: 257 };

export function encodeQuery(id: number, name: string, qtype: number): Buffer {
  const labels = name.split('.').filter(Boolean).map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')]));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(qtype, 1);
  tail.writeUInt16BE(1, 3); // IN
  return Buffer.concat([header, ...labels, tail]);
}

export interface Question {
  id: number;
  name: string;
  qtype: number;
  /** End of the question section. */
  end: number;
}

export function parseQuery(msg: Buffer): Question {
  let at = 12;
  const labels: string[] = [];
  while (msg[at]! !== 0) {
    const len = msg[at]!;
    labels.push(msg.toString('ascii', at + 1, at + 1 + len));
    at += len + 1;
  }
  return { id: msg.readUInt16BE(0), name: labels.join('.'), qtype: msg.readUInt16BE(at + 1), end: at + 5 };
}

/** The question echoed back with QR set and the rcode; no answer records. */
export function encodeResponse(query: Buffer, rcode: number): Buffer {
  const { end } = parseQuery(query);
  const out = Buffer.from(query.subarray(0, end));
  out.writeUInt16BE(0x8180 | rcode, 2);
  return out;
}

function rcodeFor(name: string): number | undefined {
  const word = name.split('-')[0]!;
  return word === 'drop' ? undefined : (rcodes[word] ?? 0);
}

async function serve(port: number, delayMs: number): Promise<void> {
  const udp = dgram.createSocket({ type: 'udp6', ipv6Only: false });
  udp.on('message', (msg, from) => {
    const rcode = rcodeFor(parseQuery(msg).name);
    if (rcode !== undefined) void sleep(delayMs).then(() => udp.send(encodeResponse(msg, rcode), from.port, from.address));
  });
  udp.bind(port, '::');
  const tcp = net.createServer((socket) => {
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const msg = pending.subarray(2, 2 + pending.readUInt16BE(0));
        pending = pending.subarray(2 + msg.length);
        const rcode = rcodeFor(parseQuery(msg).name);
        if (rcode === undefined) continue;
        const answer = encodeResponse(msg, rcode);
        const framed = Buffer.concat([Buffer.from([answer.length >> 8, answer.length & 0xff]), answer]);
        void sleep(delayMs).then(() => socket.write(framed));
      }
    });
    socket.on('error', () => undefined);
  });
  tcp.listen({ port, host: '::', ipv6Only: false });
  await Promise.all([new Promise((resolve) => udp.once('listening', resolve)), new Promise((resolve) => tcp.once('listening', resolve))]);
  process.stdout.write('ready\n');
}

const answerWaitMs = 500;

async function queryUdp(server: string, port: number, id: number, name: string, qtype: number): Promise<number | null> {
  const socket = dgram.createSocket(net.isIPv6(server) ? 'udp6' : 'udp4');
  try {
    const answer = new Promise<number>((resolve) => socket.on('message', (msg) => msg.readUInt16BE(0) === id && resolve(msg.readUInt16BE(2) & 0xf)));
    socket.send(encodeQuery(id, name, qtype), port, server);
    return await Promise.race([answer, sleep(answerWaitMs, null)]);
  } finally {
    socket.close();
  }
}

async function queryTcp(server: string, port: number, id: number, name: string, qtype: number): Promise<number | null> {
  const socket = net.connect({ host: server, port });
  try {
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const query = encodeQuery(id, name, qtype);
    socket.write(Buffer.concat([Buffer.from([query.length >> 8, query.length & 0xff]), query]));
    const answer = new Promise<number>((resolve) => socket.once('data', (chunk) => resolve(chunk.readUInt16BE(4) & 0xf)));
    return await Promise.race([answer, sleep(answerWaitMs, null)]);
  } finally {
    socket.destroy();
  }
}

/** Answers by rcode name (or "none"), in the order sent. */
async function query(server: string, port: number, transport: string, qtype: string, names: readonly string[]): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  let id = 0x1000;
  for (const name of names) {
    const ask = transport === 'tcp' ? queryTcp : queryUdp;
    const rcode = await ask(server, port, id++, name, qtypes[qtype] ?? Number(qtype));
    const key = rcode === null ? 'none' : String(rcode);
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'serve') await serve(Number(args[0]), Number(args[1]));
  else process.stdout.write(`${JSON.stringify(await query(args[0]!, Number(args[1]), args[2]!, args[3]!, args.slice(4)))}\n`);
}
