// The alert path end to end: a real Prometheus evaluates our rule file
// against the real agent and sends to a real Alertmanager, which notifies a
// webhook. The agent stops: ProbePilotTargetDown reaches the webhook firing;
// the agent comes back on the same address: the same alert arrives resolved.
// Only that rule's `for` is shortened (5 m → 2 s) so the test takes seconds;
// its expression, labels and annotations are the shipped ones.
import t from 'tap';
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { startAlertmanager, type Notification } from '../helpers/alertmanager.js';
import { requirePrivileges } from '../helpers/env.js';
import { projectRoot } from '../helpers/helm.js';
import { startPrometheus } from '../helpers/prometheus.js';

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: Array<{ name: string; rules: Rule[] }>;
}

interface RulesResponse {
  data: { groups: Array<{ name: string; rules: Array<{ name: string; health: string; lastEvaluation?: string }> }> };
}

const alertName = 'ProbePilotTargetDown';
// The test needs an agent to scrape, not its collectors: one is enough.
const agentEnv = onlyCollectors('process');

function shippedRulesWithShortDelay(dir: string): { file: string; rule: Rule } {
  const rules = parseYaml(readFileSync(path.join(projectRoot, 'charts/probepilot/files/prometheus-rules.yaml'), 'utf8')) as RuleFile;
  const rule = rules.groups.flatMap((g) => g.rules).find((r) => r.alert === alertName);
  if (!rule) throw new Error(`${alertName} is not in the shipped rules`);
  rule.for = '2s';
  const file = path.join(dir, 'rules.yaml');
  writeFileSync(file, JSON.stringify(rules));
  return { file, rule };
}

const targetDown = (status: Notification['status'], instance: string) => (n: Notification) =>
  n.alerts.some((a) => a.status === status && a.labels.alertname === alertName && a.labels.instance === instance);

t.test('agent down reaches a webhook through Alertmanager, and resolves when the agent returns', async (t) => {
  if (!requirePrivileges(t, 'the agent behind Prometheus and Alertmanager')) return;
  const dir = mkdtempSync(path.join(tmpdir(), 'probepilot-alerts-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { file, rule } = shippedRulesWithShortDelay(dir);

  let agent: AgentProcess = await startAgent({ env: agentEnv });
  t.teardown(() => agent.stop());
  const instance = `127.0.0.1:${agent.port}`;

  const alertmanager = await startAlertmanager();
  t.teardown(() => alertmanager.stop());
  const prometheus = await startPrometheus({ targets: [instance], ruleFiles: [file], alertmanager: alertmanager.address });
  t.teardown(() => prometheus.stop());

  await prometheus.waitFor(async () => (await prometheus.query(`up{instance="${instance}"} == 1`)).length === 1, 30_000, 'the agent to be scraped');
  // Every shipped rule group loads and evaluates against the real agent without errors.
  const groups = await prometheus.waitFor(async () => {
    const body = (await (await fetch(`${prometheus.url}/api/v1/rules`)).json()) as RulesResponse;
    const rules = body.data.groups.flatMap((g) => g.rules);
    return rules.length > 0 && rules.every((r) => r.health === 'ok' && r.lastEvaluation !== undefined && !r.lastEvaluation.startsWith('0001')) ? body.data.groups : undefined;
  }, 30_000, 'every rule evaluated at least once with health ok');
  t.same(groups.map((g) => g.name).sort(), ['probepilot', 'probepilot-insights', 'probepilot-workloads'], 'every shipped group is loaded and evaluates cleanly');
  t.equal(alertmanager.notifications.filter(targetDown('firing', instance)).length, 0, 'no agent-down alert while the agent is up');

  const stoppedAt = Date.now();
  t.equal(await agent.stop(), 0, 'agent stopped');
  const firing = await alertmanager.waitForNotification(targetDown('firing', instance), 60_000, `${alertName} firing at the webhook`);
  const alert = firing.alerts.find((a) => a.labels.alertname === alertName)!;
  t.same(
    { severity: alert.labels.severity, job: alert.labels.job, summary: alert.annotations.summary },
    { severity: rule.labels?.severity, job: 'probepilot', summary: rule.annotations?.summary },
    'it carries the rule\'s severity and summary, for the probepilot job',
  );
  t.match(alert.annotations.description, instance, 'the description names the agent that is down');
  t.comment(`firing notification ${((firing.receivedAt - stoppedAt) / 1000).toFixed(1)} s after the agent stopped`);

  const restartedAt = Date.now();
  agent = await startAgent({ env: agentEnv, args: ['--listen', instance] });
  t.equal(agent.port, Number(instance.split(':')[1]), 'the agent is back on the same address');
  const resolved = await alertmanager.waitForNotification(targetDown('resolved', instance), 60_000, `${alertName} resolved at the webhook`);
  t.ok(resolved.receivedAt >= restartedAt, 'resolved only after the agent came back');
  t.comment(`resolved notification ${((resolved.receivedAt - restartedAt) / 1000).toFixed(1)} s after the restart`);
});
