// Self-test of the iperf3 helper: its byte counts are an oracle for other
// tests, so check them against what was asked for and against the veth.
import t from 'tap';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { runIperf } from '../helpers/iperf.js';

t.test('iperf3 between two pods', async (t) => {
  if (!requirePrivileges(t, 'iperf3 between test pods')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod();
  const b = await net.addPod();

  const before = a.vethStats();
  const tcp = await runIperf({ server: b, client: a, protocol: 'tcp', bytes: 4 * 1024 * 1024 });
  t.equal(tcp.bytesSent, 4 * 1024 * 1024, 'TCP: -n bytes sent');
  t.ok(tcp.bytesReceived > 0 && tcp.bytesReceived <= tcp.bytesSent, `TCP: ${tcp.bytesReceived} received (iperf3 stops counting at the end of the test)`);
  const crossed = a.vethStats().rxBytes - before.rxBytes;
  t.ok(crossed > tcp.bytesReceived, `the veth carried ${crossed} bytes: at least what was received, plus headers`);

  const udp = await runIperf({ server: a, client: b, protocol: 'udp', bytes: 1_000_000, bitrate: '20M', length: 1000, ipv6: true });
  t.equal(udp.bytesSent, 1_000_000, 'UDP: -n bytes sent in 1000-byte datagrams');
  t.equal(udp.packetsSent, 1000);
  // A busy shared machine may deschedule the server long enough to overflow its socket buffer.
  t.ok(udp.lostPackets !== undefined && udp.lostPackets <= 10, `UDP: ${udp.lostPackets} of 1000 datagrams lost as the server saw it`);

  const timed = await runIperf({ server: b, client: a, protocol: 'tcp', seconds: 1, bitrate: '10M' });
  t.ok(timed.seconds >= 0.9 && timed.seconds < 5, `-t 1 ran ${timed.seconds} s`);

  const both = (await b.exec('ss', ['-Hltn'])).stdout;
  t.notMatch(both, /:5201\b/, 'no iperf3 server left listening');
  await t.rejects(runIperf({ server: b, client: a, protocol: 'tcp' }), /exactly one of bytes and seconds/);
});
