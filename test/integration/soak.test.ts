// The short soak CI runs (npm run soak is the 10-minute one): pods and cgroups
// churning under a real Prometheus scraping every second; see bench/soak.ts,
// whose soakFailures holds every check and its stated bound.
import t from 'tap';
import { requirePrivileges } from '../helpers/env.js';
import { defaultSoak, formatSoakReport, runSoak, soakFailures, type SoakOptions } from '../../bench/soak.js';

t.test('churn soak: no failed scrape, clean exposition, monotonic counters, bounded series, flat RSS and fds, conservation within 1 %', { timeout: 420_000 }, async (t) => {
  if (!requirePrivileges(t, 'churn soak')) return;
  const opts: SoakOptions = { ...defaultSoak, durationSeconds: 120, log: (line) => t.comment(line) };
  const report = await runSoak(opts);
  t.comment(formatSoakReport(report));
  t.same(soakFailures(report, opts), [], 'every soak check holds');
  // The churn reached the pods' series: deleted pods' series went within the run (grace period 60 s), and the overflow took the rest.
  t.ok(report.podsCreated >= 114 && report.cgroupsCycled >= 300, `${report.podsCreated} pods and ${report.cgroupsCycled} cgroups cycled`);
  for (const c of report.conservation) t.ok(c.veth > 1_000_000, `${c.direction}: ${c.veth} bytes of traffic crossed the pods' veths`);
});
