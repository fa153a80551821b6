// Known traffic between two test pods, measured by iperf3 itself: its JSON
// report is the independent oracle the TC byte counters are checked against.
import type { Pod } from './pods.js';
import { collect } from './proc.js';
import { waitFor } from './wait.js';

export interface IperfOptions {
  /** Runs `iperf3 -s -1` (one test, then exit). */
  server: Pod;
  client: Pod;
  protocol: 'tcp' | 'udp';
  /** Amount to send (-n). Give exactly one of bytes and seconds. */
  bytes?: number;
  /** Duration (-t). */
  seconds?: number;
  /** Target bitrate (-b), e.g. '50M'; '0' is unlimited. iperf3's default is 1M for UDP, unlimited for TCP. */
  bitrate?: string;
  /** Bytes per write (-l); for UDP the datagram payload size. */
  length?: number;
  /** Connect to the server's IPv6 address instead of its IPv4 one. */
  ipv6?: boolean;
  /** Default 5201; each netns has its own port space, so it only matters for concurrent tests in one pod. */
  port?: number;
  /** Bound on the whole run; default: the planned duration plus 30 s, or 60 s for -n. */
  timeoutMs?: number;
}

export interface IperfResult {
  /** Payload bytes (no headers) the client wrote; -n is rounded up to whole writes (-l). */
  bytesSent: number;
  /**
   * Payload bytes the server read. For TCP this can be well below bytesSent:
   * iperf3 3.12 ends the test once the client has *written* everything and
   * the server stops reading then, so data still in flight is not counted —
   * and when the server's close resets the connection, the client's unsent
   * tail never crosses the wire at all. What crossed lies between the two;
   * use the veth statistics when a test needs the exact amount.
   */
  bytesReceived: number;
  seconds: number;
  /** UDP only: datagrams sent, and lost as the server saw it. */
  packetsSent?: number;
  lostPackets?: number;
  /** The client's whole report, for anything not lifted out above. */
  report: IperfReport;
}

interface IperfSum {
  bytes: number;
  seconds: number;
  packets?: number;
  lost_packets?: number;
}

/** The parts of `iperf3 -J` (3.12) read here; UDP reports have the same sum_sent/sum_received. */
export interface IperfReport {
  error?: string;
  end?: { sum_sent?: IperfSum; sum_received?: IperfSum };
}

function parseReport(stdout: string, what: string): IperfReport {
  let report: IperfReport;
  try {
    report = JSON.parse(stdout) as IperfReport;
  } catch {
    throw new Error(`${what}: no JSON report: ${stdout.slice(0, 500)}`);
  }
  if (report.error) throw new Error(`${what}: ${report.error}`);
  return report;
}

export async function runIperf(opts: IperfOptions): Promise<IperfResult> {
  const { server, client, protocol, port = 5201 } = opts;
  if ((opts.bytes === undefined) === (opts.seconds === undefined)) throw new Error('runIperf: give exactly one of bytes and seconds');
  const timeoutMs = opts.timeoutMs ?? (opts.seconds !== undefined ? opts.seconds * 1000 + 30_000 : 60_000);
  const target = opts.ipv6 ? server.ipv6 : server.ipv4;
  const what = `iperf3 ${protocol} ${client.name} -> ${server.name} [${target}]:${port}`;

  const serverProcess = server.run('iperf3', ['-s', '-1', '-p', String(port)]);
  const serverDone = collect(serverProcess, { timeoutMs });
  try {
    // The control connection is TCP for UDP tests too: listening means ready.
    await waitFor(async () => (await server.exec('ss', ['-Hltn', `sport = :${port}`])).stdout.includes(`:${port}`), {
      timeoutMs: 10_000,
      intervalMs: 20,
      what: `iperf3 server in ${server.name} to listen on ${port}`,
    });
    const args = ['-c', target, '-p', String(port), '-J', '--connect-timeout', '5000'];
    if (protocol === 'udp') args.push('-u');
    if (opts.bytes !== undefined) args.push('-n', String(opts.bytes));
    if (opts.seconds !== undefined) args.push('-t', String(opts.seconds));
    if (opts.bitrate !== undefined) args.push('-b', opts.bitrate);
    if (opts.length !== undefined) args.push('-l', String(opts.length));
    const res = await client.exec('iperf3', args, { timeoutMs });
    const report = parseReport(res.stdout, what);
    if (res.code !== 0) throw new Error(`${what}: exit ${res.code ?? res.signal}: ${res.stderr}`);
    const sent = report.end?.sum_sent;
    const received = report.end?.sum_received;
    if (!sent || !received) throw new Error(`${what}: report has no sum_sent/sum_received`);
    const result: IperfResult = { bytesSent: sent.bytes, bytesReceived: received.bytes, seconds: sent.seconds, report };
    if (protocol === 'udp') {
      result.packetsSent = sent.packets;
      // The receiver's view: the sender's own sum always says 0 lost.
      result.lostPackets = received.lost_packets;
    }
    return result;
  } finally {
    serverProcess.kill('SIGKILL');
    await serverDone.catch(() => undefined);
  }
}
