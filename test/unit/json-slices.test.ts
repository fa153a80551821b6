// Large API answers are written in slices: the text must be JSON.stringify's,
// byte for byte, and the event loop must get turns while it is written.
import t from 'tap';
import { jsonInSlices } from '../../src/api/rest.js';

async function text(generator: AsyncGenerator<Buffer>): Promise<{ text: string; chunks: number }> {
  const chunks: Buffer[] = [];
  for await (const chunk of generator) chunks.push(chunk);
  return { text: Buffer.concat(chunks).toString(), chunks: chunks.length };
}

t.test('JSON.stringify byte for byte, in slices, with turns for the event loop', async (t) => {
  const flows = Array.from({ length: 200_000 }, (_, i) => ({
    workload: { namespace: `ns-${i % 7}`, pod: `p\u00e9-"${i}"\n` },
    direction: i % 2 ? 'egress' : 'ingress',
    peer: { peer_class: 'pod', peer_workload: `w${i}` },
    bytes: i * 1500,
    packets: i,
    bytesPerSecond: i % 3 ? i / 7 : null,
    packetsPerSecond: null,
  }));
  const value = { view: 'peer', total: flows.length, intervalSeconds: 1.25, flows };
  let turns = 0;
  const ticker = setInterval(() => turns++, 0);
  const { text: written, chunks } = await text(jsonInSlices(value, 'flows'));
  clearInterval(ticker);
  t.ok(written === JSON.stringify(value), 'the same text as JSON.stringify');
  t.ok(chunks > 1 && turns > 0, `${chunks} chunks, ${turns} timer turns meanwhile`);
});

t.test('small and edge cases', async (t) => {
  for (const value of [{ flows: [] }, { view: 'protocol', total: 0, intervalSeconds: null, flows: [] }, { a: 1, flows: [1, 'two', null, { x: [3] }] }]) {
    t.equal((await text(jsonInSlices(value, 'flows'))).text, JSON.stringify(value), JSON.stringify(value));
  }
  await t.rejects(text(jsonInSlices({ flows: [], after: 1 }, 'flows')), /flows must be the last key/);
});
