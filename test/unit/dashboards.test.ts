// The dashboards import into Grafana without edits: valid structure, one
// datasource variable every panel uses (no __inputs to fill in), variables
// that only reference earlier ones, a layout without overlaps, and metric
// names the agent documents. Whether every query returns data is proven
// against a real Prometheus in test/integration/dashboards.test.ts.
import t from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../helpers/helm.js';
import {
  allPanels,
  grafanaBuiltins,
  interpolate,
  loadDashboards,
  parseLabelValues,
  referencedVariables,
  regexValue,
  variableQuery,
  type GridPos,
} from '../helpers/dashboards.js';

const dashboards = loadDashboards();
const datasource = { type: 'prometheus', uid: '${datasource}' };

/** Metric names the README documents, plus patterns like probepilot_process_*. */
function documentedMetrics(): { names: Set<string>; patterns: RegExp[] } {
  const readme = readFileSync(path.join(projectRoot, 'README.md'), 'utf8');
  const cells = [...readme.matchAll(/^\| `(probepilot_[a-z0-9_*]+)`(?:, `(probepilot_[a-z0-9_*]+)`)? \|/gm)].flatMap((m) => [m[1], m[2]]).filter((c): c is string => c !== undefined);
  return {
    names: new Set(cells.filter((c) => !c.includes('*'))),
    patterns: cells.filter((c) => c.includes('*')).map((c) => new RegExp(`^${c.replace('*', '[a-z0-9_]+')}$`)),
  };
}

/** A histogram's series names map to its family. */
function family(name: string): string {
  return name.replace(/_(bucket|count|sum)$/, '');
}

const overlaps = (a: GridPos, b: GridPos) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

t.test('the six dashboards are there, each with its own uid and title', async (t) => {
  t.same(
    dashboards.map((d) => d.file),
    ['probepilot-agent-health.json', 'probepilot-gpu.json', 'probepilot-insights.json', 'probepilot-node-overview.json', 'probepilot-pod-latency.json', 'probepilot-pod-network.json'],
  );
  for (const { file, dashboard } of dashboards) {
    t.equal(dashboard.uid, path.basename(file, '.json'), `${file}: uid is the file name (stable links between dashboards)`);
    t.match(dashboard.title, /^ProbePilot \/ /, `${file}: title in the ProbePilot folder style`);
    t.ok(dashboard.schemaVersion >= 36, `${file}: schema ${dashboard.schemaVersion} (Grafana 9+)`);
    t.ok(dashboard.id === undefined || dashboard.id === null, `${file}: no instance-specific id`);
    t.equal(dashboard.__inputs, undefined, `${file}: no __inputs, so provisioning and import need no edits`);
  }
  t.equal(new Set(dashboards.map((d) => d.dashboard.title)).size, dashboards.length, 'titles are distinct');
});

t.test('variables: a Prometheus datasource picker first, then label_values chains', async (t) => {
  for (const { file, dashboard } of dashboards) {
    const [first, ...rest] = dashboard.templating.list;
    t.match(first, { name: 'datasource', type: 'datasource', query: 'prometheus' }, `${file}: the datasource variable comes first`);
    const names = dashboard.templating.list.map((v) => v.name);
    // Insights reads per-workload recording rules: they have no pod.
    const expected = file === 'probepilot-agent-health.json' ? ['node', 'job'] : file === 'probepilot-insights.json' ? ['node', 'namespace', 'workload'] : ['node', 'namespace', 'workload', 'pod'];
    for (const name of expected) t.ok(names.includes(name), `${file}: templated on ${name}`);
    const defined = new Set(['datasource']);
    for (const v of rest) {
      const query = variableQuery(v);
      t.equal(v.type, 'query', `${file} $${v.name}: a query variable`);
      t.same(v.datasource, datasource, `${file} $${v.name}: queries the chosen datasource`);
      t.ok(parseLabelValues(query), `${file} $${v.name}: label_values(selector, label): ${query}`);
      t.ok(v.includeAll && v.multi && typeof v.allValue === 'string', `${file} $${v.name}: multi-value with an All that is a regex, not a list of every value`);
      const unknown = referencedVariables(query).filter((r) => !defined.has(r));
      t.same(unknown, [], `${file} $${v.name}: references only variables defined before it`);
      defined.add(v.name);
    }
  }
});

t.test('panels: ids, layout, datasource and queries', async (t) => {
  const documented = documentedMetrics();
  const isDocumented = (name: string) => documented.names.has(family(name)) || documented.patterns.some((p) => p.test(name));
  const prometheusOwn = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);
  for (const { file, dashboard } of dashboards) {
    const panels = allPanels(dashboard);
    const variables = new Set([...dashboard.templating.list.map((v) => v.name), ...grafanaBuiltins]);
    t.equal(new Set(panels.map((p) => p.id)).size, panels.length, `${file}: panel ids are unique`);
    const placed = dashboard.panels;
    for (const [i, p] of placed.entries()) {
      const { x, y, w, h } = p.gridPos;
      t.ok(Number.isInteger(x) && Number.isInteger(y) && w > 0 && h > 0 && x >= 0 && x + w <= 24, `${file} "${p.title}": fits the 24-column grid`);
      const hit = placed.slice(i + 1).find((q) => overlaps(p.gridPos, q.gridPos));
      t.notOk(hit, `${file} "${p.title}": overlaps no other panel${hit ? ` (it overlaps "${hit.title}")` : ''}`);
    }
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      const where = `${file} "${panel.title}"`;
      t.same(panel.datasource, datasource, `${where}: uses the datasource variable`);
      const targets = panel.targets ?? [];
      t.ok(targets.length > 0, `${where}: has queries`);
      t.equal(new Set(targets.map((q) => q.refId)).size, targets.length, `${where}: refIds are unique`);
      for (const target of targets) {
        t.same(target.datasource, datasource, `${where} ${target.refId}: uses the datasource variable`);
        t.ok(target.expr.trim().length > 0, `${where} ${target.refId}: has an expression`);
        const unknown = referencedVariables(target.expr).filter((v) => !variables.has(v));
        t.same(unknown, [], `${where} ${target.refId}: references only defined variables`);
        if (panel.type === 'heatmap') t.match(target, { format: 'heatmap', expr: /by \(le\)/ }, `${where}: buckets by le, as a heatmap`);
        const metrics = [...target.expr.matchAll(/\b((?:probepilot_|scrape_)[a-z0-9_]+|up)\{/g)].map((m) => m[1]!);
        for (const name of metrics.filter((n) => !prometheusOwn.has(n))) {
          t.ok(isDocumented(name), `${where}: ${name} is a documented metric`);
        }
      }
    }
  }
});

t.test('template helpers format values as Grafana does for Prometheus', async (t) => {
  t.equal(regexValue(['web']), 'web');
  t.equal(regexValue(['a.b', 'c']), '(a\\\\.b|c)', 'regex characters escaped for a PromQL string');
  t.equal(interpolate('x{a=~"$a", b="${b}"}[$__range]', { a: '(1|2)', b: 'two', __range: '5m' }), 'x{a=~"(1|2)", b="two"}[5m]');
  t.throws(() => interpolate('$missing', {}), /no value for \$missing/);
  t.same(parseLabelValues('label_values(up{job="x"}, instance)'), { selector: 'up{job="x"}', label: 'instance' });
});
