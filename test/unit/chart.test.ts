// The Helm chart and the plain Prometheus Operator manifests, checked the
// way a cluster would see them without a cluster: helm 4 lints and renders
// the chart, kubernetes-models validates every object against the API
// schemas, the agent's own config validator accepts the rendered config, and
// promtool checks and unit-tests the alert rules.
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml, parseDocument, isMap, isScalar, type YAMLMap } from 'yaml';
import { ConfigMap, Service, ServiceAccount, type IContainer, type IVolume } from 'kubernetes-models/v1';
import { DaemonSet, type IDaemonSet } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding, type IClusterRole, type IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { NetworkPolicy, type INetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodMonitor, PrometheusRule, ServiceMonitor, type IPodMonitor, type IServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { ConfigError, resolveConfig } from '../../src/config.js';
import { parseRuleFile } from '../../src/events/rules.js';
import { defaultRulesPath } from '../../src/events/security-rules.js';
import { loadDashboards, dashboardsDir } from '../helpers/dashboards.js';
import { chartDir, helm, helmTemplate, parseRendered, projectRoot, type KubeObject, type Rendered } from '../helpers/helm.js';
import { execCommand } from '../helpers/proc.js';

type Validator = (object: KubeObject) => void;

function modelValidator<T>(Model: new (data: T) => { validate(): void }): Validator {
  return (object) => new Model(object as unknown as T).validate();
}

/** Every kind the chart or servicemonitors/ may contain; anything else is a test failure, never a silent pass. */
const models: Record<string, Validator> = {
  'v1/ServiceAccount': modelValidator(ServiceAccount),
  'v1/ConfigMap': modelValidator(ConfigMap),
  'v1/Service': modelValidator(Service),
  'apps/v1/DaemonSet': modelValidator(DaemonSet),
  'rbac.authorization.k8s.io/v1/ClusterRole': modelValidator(ClusterRole),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': modelValidator(ClusterRoleBinding),
  'monitoring.coreos.com/v1/ServiceMonitor': modelValidator(ServiceMonitor),
  'monitoring.coreos.com/v1/PodMonitor': modelValidator(PodMonitor),
  'monitoring.coreos.com/v1/PrometheusRule': modelValidator(PrometheusRule),
  'networking.k8s.io/v1/NetworkPolicy': modelValidator(NetworkPolicy),
};

function validateAll(t: Test, objects: readonly KubeObject[]): void {
  for (const object of objects) {
    const what = `${object.kind} ${object.metadata.name}`;
    const validate = models[`${object.apiVersion}/${object.kind}`];
    if (!validate) {
      t.fail(`${what}: no schema for ${object.apiVersion} ${object.kind}`);
      continue;
    }
    t.doesNotThrow(() => validate(object), `${what} is valid against its schema`);
  }
}

const rulesFile = path.join(chartDir, 'files/prometheus-rules.yaml');
const plainRuleManifest = path.join(projectRoot, 'servicemonitors/prometheusrule.yaml');
const plainPodMonitor = path.join(projectRoot, 'servicemonitors/podmonitor.yaml');
const rulesTestFile = path.join(projectRoot, 'test/fixtures/prometheus-rules.test.yaml');

function readManifests(file: string): KubeObject[] {
  return parseRendered(readFileSync(file, 'utf8')).objects;
}

function agentContainer(daemonSet: IDaemonSet): IContainer {
  const containers = daemonSet.spec?.template.spec?.containers ?? [];
  if (containers.length !== 1 || !containers[0]) throw new Error(`expected one container, got ${containers.length}`);
  return containers[0];
}

function daemonSetOf(rendered: Rendered): IDaemonSet {
  return rendered.one('DaemonSet') as unknown as IDaemonSet;
}

function addedCapabilities(daemonSet: IDaemonSet): string[] {
  return [...(agentContainer(daemonSet).securityContext?.capabilities?.add ?? [])].sort();
}

/** The agent's config as the ConfigMap carries it, parsed like `probepilot agent --config` does. */
function renderedConfig(rendered: Rendered): unknown {
  const data = rendered.one('ConfigMap').data as Record<string, string> | undefined;
  const text = data?.['config.yaml'];
  if (text === undefined) throw new Error('the ConfigMap has no config.yaml');
  return parseYaml(text);
}

/** Host mounts as "container path ← host path (ro|rw)", so one comparison shows every difference. */
function hostMounts(daemonSet: IDaemonSet): string[] {
  const volumes = new Map<string, IVolume>((daemonSet.spec?.template.spec?.volumes ?? []).map((v) => [v.name, v]));
  return (agentContainer(daemonSet).volumeMounts ?? [])
    .flatMap((mount) => {
      const hostPath = volumes.get(mount.name)?.hostPath?.path;
      return hostPath === undefined ? [] : [`${mount.mountPath} <- ${hostPath} (${mount.readOnly ? 'ro' : 'rw'})`];
    })
    .sort();
}

/** Non-default values: every optional object on, the agent configured differently, other resources and host paths. */
const customValues = {
  fullnameOverride: 'node-agent',
  image: { repository: 'registry.example/probepilot', tag: '1.2.3' },
  config: {
    listen: '0.0.0.0:9800',
    logLevel: 'debug',
    bpfStats: true,
    seriesGraceSeconds: 60,
    collectors: { network: { attachMode: 'clsact', maxEntries: 131072, interfaces: { include: ['veth*', 'eth0'], exclude: ['veth-skip*'] } } },
  },
  securityContext: { sysResource: true, mountFilesystems: true, seccompProfile: { type: 'RuntimeDefault' }, appArmorProfile: { type: 'RuntimeDefault' } },
  hostPaths: { tracefs: '/sys/kernel/debug/tracing' },
  resources: { requests: { cpu: '100m', memory: '256Mi' }, limits: { cpu: '1', memory: '1Gi' } },
  priorityClassName: '',
  updateStrategy: { maxUnavailable: '20%' },
  extraEnv: [{ name: 'PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS', value: '5' }],
  serviceMonitor: { enabled: true, labels: { release: 'kube-prometheus-stack' }, interval: '15s', scrapeTimeout: '5s' },
  prometheusRule: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
};

t.test('helm lint passes with default and with non-default values', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'probepilot-lint-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const valuesFile = path.join(dir, 'values.json');
  writeFileSync(valuesFile, JSON.stringify(customValues));
  for (const args of [[], ['--values', valuesFile]]) {
    const result = await helm(['lint', '--strict', chartDir, ...args]);
    t.equal(result.code, 0, `helm lint --strict ${args.join(' ')}: ${result.stdout}${result.stderr}`);
  }
});

t.test('default values render the agent, its RBAC, config and Service, and nothing optional', async (t) => {
  const rendered = await helmTemplate();
  t.same(rendered.objects.map((o) => o.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Service', 'ServiceAccount']);
  validateAll(t, rendered.objects);
  for (const object of rendered.objects.filter((o) => !o.kind.startsWith('Cluster'))) {
    t.equal(object.metadata.namespace, 'probepilot', `${object.kind} is in the release namespace`);
  }
});

t.test('non-default values render valid objects, ServiceMonitor and PrometheusRule included', async (t) => {
  const rendered = await helmTemplate(customValues, { release: 'obs', namespace: 'monitoring' });
  t.same(rendered.objects.map((o) => o.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'PrometheusRule', 'Service', 'ServiceAccount', 'ServiceMonitor']);
  validateAll(t, rendered.objects);
  for (const object of rendered.objects) t.equal(object.metadata.name, 'node-agent', `${object.kind} takes fullnameOverride`);
  const daemonSet = daemonSetOf(rendered);
  const container = agentContainer(daemonSet);
  t.equal(container.image, 'registry.example/probepilot:1.2.3');
  t.same(container.resources, customValues.resources, 'resources exactly as given');
  t.equal(daemonSet.spec?.template.spec?.priorityClassName, undefined, 'an empty priorityClassName sets none');
  t.equal(daemonSet.spec?.updateStrategy?.rollingUpdate?.maxUnavailable, '20%');
  t.same(container.securityContext?.seccompProfile, { type: 'RuntimeDefault' });
  t.same(container.securityContext?.appArmorProfile, { type: 'RuntimeDefault' });
  t.ok(container.env?.some((e) => e.name === 'PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS' && e.value === '5'), 'extraEnv reaches the container');
  t.ok(hostMounts(daemonSet).includes('/sys/kernel/tracing <- /sys/kernel/debug/tracing (ro)'), 'the tracefs host path is configurable, the container path is where the agent looks');
  t.equal(rendered.one('ServiceMonitor').metadata.labels?.release, 'kube-prometheus-stack');
  t.equal(rendered.one('PrometheusRule').metadata.labels?.release, 'kube-prometheus-stack');
});

t.test('the DaemonSet runs on every node with the least privilege that works', async (t) => {
  const daemonSet = daemonSetOf(await helmTemplate());
  const pod = daemonSet.spec?.template.spec;
  const container = agentContainer(daemonSet);
  const security = container.securityContext;
  t.not(security?.privileged, true, 'not privileged');
  t.equal(security?.allowPrivilegeEscalation, false, 'no privilege escalation');
  t.equal(security?.readOnlyRootFilesystem, true, 'read-only root filesystem');
  t.equal(security?.runAsUser, 0, 'uid 0: bpffs and tracefs are root-owned');
  t.same(security?.capabilities?.drop, ['ALL'], 'every default capability dropped');
  t.same(addedCapabilities(daemonSet), ['BPF', 'NET_ADMIN', 'PERFMON', 'SYS_PTRACE'], 'exactly the capabilities the agent uses');
  t.same(security?.seccompProfile, { type: 'Unconfined' }, 'seccomp: runtimes that predate CAP_BPF block bpf() by default (values.yaml)');

  t.equal(pod?.hostNetwork, true, 'host network: TC attaches to the node interfaces and host ends of veths');
  t.equal(pod?.hostPID, true, 'host PID: /proc/PID/ns/net and /proc/PID/cgroup of the pods');
  t.equal(pod?.hostIPC, undefined, 'no host IPC');
  t.equal(pod?.dnsPolicy, 'ClusterFirstWithHostNet', 'cluster DNS despite the host network');
  t.same(pod?.tolerations, [{ operator: 'Exists' }], 'tolerates every taint');
  t.equal(pod?.priorityClassName, 'system-node-critical');
  t.same(daemonSet.spec?.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
  t.ok(container.resources?.requests?.memory && container.resources.limits?.memory, 'memory request and limit');

  t.same(container.command, ['probepilot']);
  t.same(container.args, ['agent', '--config', '/etc/probepilot/config.yaml']);
  t.same(
    container.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom,
    { fieldRef: { fieldPath: 'spec.nodeName' } },
    'NODE_NAME from the downward API',
  );
});

t.test('optional capabilities follow their values, and only them', async (t) => {
  const cases: [object, string[]][] = [
    [{ sysResource: true }, ['BPF', 'NET_ADMIN', 'PERFMON', 'SYS_PTRACE', 'SYS_RESOURCE']],
    [{ mountFilesystems: true }, ['BPF', 'NET_ADMIN', 'PERFMON', 'SYS_ADMIN', 'SYS_PTRACE']],
    [{ extraCapabilities: ['IPC_LOCK', 'BPF'] }, ['BPF', 'IPC_LOCK', 'NET_ADMIN', 'PERFMON', 'SYS_PTRACE']],
  ];
  for (const [securityContext, expected] of cases) {
    t.same(addedCapabilities(daemonSetOf(await helmTemplate({ securityContext }))), expected, JSON.stringify(securityContext));
  }
});

t.test('the DaemonSet mounts what the agent reads, read-only except bpffs and the state directory, and nothing more', async (t) => {
  const daemonSet = daemonSetOf(await helmTemplate());
  // Container paths are where the agent looks: src/system/mounts.ts (bpffs, tracefs,
  // cgroup2 found in mountinfo), libbpf for /sys/kernel/btf/vmlinux.
  t.same(hostMounts(daemonSet), [
    '/sys/fs/bpf <- /sys/fs/bpf (rw)',
    '/sys/fs/cgroup <- /sys/fs/cgroup (ro)',
    '/sys/kernel/btf <- /sys/kernel/btf (ro)',
    '/sys/kernel/tracing <- /sys/kernel/tracing (ro)',
    '/var/lib/probepilot <- /var/lib/probepilot (rw)',
  ]);
  // Pins and state must be where the agent's defaults put them, on the node, to outlive the pod.
  const agentDefaults = resolveConfig({ file: renderedConfig(await helmTemplate()) });
  t.ok(agentDefaults.pins.enabled && agentDefaults.pins.root.startsWith('/sys/fs/bpf/'), `pins under the host bpffs: ${agentDefaults.pins.root}`);
  t.equal(agentDefaults.pins.stateDir, '/var/lib/probepilot', 'the state directory is the host mount');
  const mounts = agentContainer(daemonSet).volumeMounts ?? [];
  t.notOk(
    mounts.some((m) => m.mountPropagation === 'Bidirectional'),
    'no Bidirectional propagation (it needs a privileged container; pins need none)',
  );
  const config = mounts.find((m) => m.mountPath === '/etc/probepilot');
  const configVolume = daemonSet.spec?.template.spec?.volumes?.find((v) => v.name === config?.name);
  t.equal(configVolume?.configMap?.name, 'pp-probepilot', 'the config file comes from the chart ConfigMap');
  t.equal(config?.readOnly, true);
});

t.test('the rendered config is accepted by the agent and drives the port, probes and Service', async (t) => {
  const defaults = await helmTemplate();
  const config = resolveConfig({ file: renderedConfig(defaults) });
  t.equal(config.listen.port, 9742);
  t.equal(config.collectors.network.attachMode, 'auto');

  const custom = await helmTemplate(customValues);
  const customConfig = resolveConfig({ file: renderedConfig(custom) });
  t.match(renderedConfig(custom), customValues.config, 'every given config key reaches the agent as given (helm merges it over the chart defaults)');
  t.equal(customConfig.collectors.network.attachMode, 'clsact');
  t.same(customConfig.collectors.network.interfaces, { include: ['veth*', 'eth0'], exclude: ['veth-skip*'] });

  for (const [rendered, port] of [[defaults, 9742], [custom, 9800]] as const) {
    const container = agentContainer(daemonSetOf(rendered));
    t.same(container.ports, [{ name: 'metrics', containerPort: port, protocol: 'TCP' }], `container port ${port} from config.listen`);
    t.same(container.livenessProbe?.httpGet, { path: '/healthz', port: 'metrics', scheme: 'HTTP' });
    t.same(container.readinessProbe?.httpGet, { path: '/readyz', port: 'metrics', scheme: 'HTTP' });
    const service = rendered.one('Service');
    t.same((service.spec as { ports: unknown }).ports, [{ name: 'metrics', port: 9742, targetPort: 'metrics', protocol: 'TCP' }], 'the Service targets the named port');
  }
  // A config change must roll the pods: the agent reads its file once.
  t.not(
    daemonSetOf(defaults).spec?.template.metadata?.annotations?.['checksum/config'],
    daemonSetOf(custom).spec?.template.metadata?.annotations?.['checksum/config'],
  );
});

t.test('gpu.enabled turns on the GPU collector with the pod-resources socket and the NVIDIA runtime, and nothing else', async (t) => {
  const rendered = await helmTemplate({ gpu: { enabled: true } });
  const daemonSet = daemonSetOf(rendered);
  const config = resolveConfig({ file: renderedConfig(rendered) });
  t.same(config.collectors.gpu, { ...resolveConfig().collectors.gpu, enabled: true, podResourcesSocket: '/var/lib/kubelet/pod-resources/kubelet.sock' }, 'the agent runs the GPU collector against the mounted socket');
  t.equal(config.collectors.network.enabled, true, 'the rest of the config is untouched');
  t.ok(hostMounts(daemonSet).includes('/var/lib/kubelet/pod-resources <- /var/lib/kubelet/pod-resources (ro)'), 'the pod-resources directory is mounted read-only');
  t.equal(daemonSet.spec?.template.spec?.runtimeClassName, 'nvidia', 'the NVIDIA runtime injects NVML and the devices');
  const env = Object.fromEntries((agentContainer(daemonSet).env ?? []).map((e) => [e.name, e.value]));
  t.same([env.NVIDIA_VISIBLE_DEVICES, env.NVIDIA_DRIVER_CAPABILITIES], ['all', 'utility'], 'every GPU, the management library only');
  t.same(addedCapabilities(daemonSet), addedCapabilities(daemonSetOf(await helmTemplate())), 'no capability more');
  const custom = daemonSetOf(await helmTemplate({ gpu: { enabled: true, runtimeClassName: '', podResourcesDir: '/run/kubelet/pod-resources' } }));
  t.equal(custom.spec?.template.spec?.runtimeClassName, undefined, 'an empty runtimeClassName sets none (NVIDIA runtime as the default)');
  t.ok(hostMounts(custom).includes('/run/kubelet/pod-resources <- /run/kubelet/pod-resources (ro)'), 'the directory is configurable');
  const plain = daemonSetOf(await helmTemplate());
  t.notOk(hostMounts(plain).some((m) => m.includes('pod-resources')), 'without gpu.enabled: no pod-resources mount');
  t.equal(plain.spec?.template.spec?.runtimeClassName, undefined, 'and no runtime class');
  t.equal(resolveConfig({ file: renderedConfig(await helmTemplate()) }).collectors.gpu.enabled, false, 'and no GPU collector');
});

t.test('a config the agent would reject renders, and the agent validator catches it', async (t) => {
  const rendered = await helmTemplate({ config: { listen: '0.0.0.0:9742', collectors: { network: { attachMode: 'xdp' } } } });
  t.throws(() => resolveConfig({ file: renderedConfig(rendered) }), ConfigError, 'so the chart and the agent disagree nowhere silently');
  await t.rejects(helmTemplate({ config: { listen: 'localhost' } }), /has no port/, 'a listen address without a port fails the render');
});

const readRules = [
  { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['apps'], resources: ['replicasets'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['batch'], resources: ['jobs'], verbs: ['get', 'list'] },
];

t.test('RBAC is read-only pods, nodes, replicasets and jobs for the chart ServiceAccount, plus exactly the reviews of delegated auth', async (t) => {
  const rendered = await helmTemplate();
  t.equal((renderedConfig(rendered) as { auth: { mode: string } }).auth.mode, 'kubernetes', 'the chart turns delegated auth on');
  const role = rendered.one('ClusterRole') as unknown as IClusterRole;
  t.same(role.rules, [
    ...readRules,
    { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
    { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
  ]);
  for (const mode of ['none', 'tokens']) {
    const other = (await helmTemplate({ config: { auth: { mode } } })).one('ClusterRole') as unknown as IClusterRole;
    t.same(other.rules, readRules, `auth.mode=${mode}: no review permissions`);
  }
  const binding = rendered.one('ClusterRoleBinding') as unknown as IClusterRoleBinding;
  const account = rendered.one('ServiceAccount');
  t.same(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata?.name });
  t.same(binding.subjects, [{ kind: 'ServiceAccount', name: account.metadata.name, namespace: 'probepilot' }]);
  t.equal(daemonSetOf(rendered).spec?.template.spec?.serviceAccountName, account.metadata.name);
});

t.test('ServiceMonitor and PodMonitor find the agents and label the job "probepilot"', async (t) => {
  const rendered = await helmTemplate(customValues);
  const podLabels = daemonSetOf(rendered).spec?.template.metadata?.labels ?? {};
  const service = rendered.one('Service');
  const serviceSpec = service.spec as { selector: Record<string, string>; clusterIP: string };
  t.equal(serviceSpec.clusterIP, 'None', 'headless: one endpoint per node');
  t.match(podLabels, serviceSpec.selector, 'the Service selects the agent pods');

  const serviceMonitor = rendered.one('ServiceMonitor') as unknown as IServiceMonitor;
  t.match(service.metadata.labels, serviceMonitor.spec.selector.matchLabels ?? {}, 'the ServiceMonitor selects the Service');
  t.same(serviceMonitor.spec.endpoints?.map((e) => [e.port, e.path, e.interval]), [['metrics', '/metrics', '15s']]);
  t.equal(serviceMonitor.spec.jobLabel, 'app.kubernetes.io/name');
  t.equal(service.metadata.labels?.['app.kubernetes.io/name'], 'probepilot', 'job="probepilot", as the rules expect');

  const [podMonitor, ...more] = readManifests(plainPodMonitor);
  t.equal(more.length, 0);
  if (!podMonitor) return;
  validateAll(t, [podMonitor]);
  const spec = (podMonitor as unknown as IPodMonitor).spec;
  t.match(podLabels, spec.selector.matchLabels ?? {}, 'the plain PodMonitor selects the chart agent pods');
  t.equal(spec.jobLabel, 'app.kubernetes.io/name');
  t.same(spec.podMetricsEndpoints?.map((e) => e.port), ['metrics'], 'and scrapes the named container port');
});

t.test('alert rules: one source, valid for promtool, and they fire', async (t) => {
  const source = parseYaml(readFileSync(rulesFile, 'utf8')) as { groups: unknown[] };
  const rendered = (await helmTemplate({ prometheusRule: { enabled: true } })).one('PrometheusRule');
  const plain = readManifests(plainRuleManifest);
  validateAll(t, plain);
  t.same((rendered.spec as { groups: unknown }).groups, source.groups, 'the chart PrometheusRule carries the rule file');
  t.same((plain[0]?.spec as { groups: unknown } | undefined)?.groups, source.groups, 'servicemonitors/prometheusrule.yaml has the same groups');
  t.ok(source.groups.length > 0);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'probepilot-rules-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const renderedRules = path.join(dir, 'rendered-rules.yaml');
  writeFileSync(renderedRules, JSON.stringify({ groups: (rendered.spec as { groups: unknown }).groups }));
  const check = await execCommand('promtool', ['check', 'rules', rulesFile, renderedRules], { timeoutMs: 30_000 });
  t.equal(check.code, 0, `promtool check rules: ${check.stdout}${check.stderr}`);
  // A day of baseline per anomaly rule is ~1,500 evaluations of every rule: 15 s on a quiet 2-core machine, more on a busy one.
  const unit = await execCommand('promtool', ['test', 'rules', rulesTestFile], { timeoutMs: 180_000 });
  t.equal(unit.code, 0, `promtool test rules: ${unit.stdout}${unit.stderr}`);
});

t.test('dashboards ship as ConfigMaps for Grafana\'s sidecar, byte-identical to dashboards/', async (t) => {
  const rendered = await helmTemplate({ dashboards: { enabled: true, annotations: { grafana_folder: 'ProbePilot' }, namespace: 'grafana' } });
  const configMaps = rendered.objects.filter((o) => o.kind === 'ConfigMap' && o.metadata.labels?.grafana_dashboard === '1');
  const files = loadDashboards();
  t.equal(configMaps.length, files.length, 'one ConfigMap per dashboard');
  validateAll(t, configMaps);
  for (const { file } of files) {
    const configMap = configMaps.find((c) => (c.data as Record<string, string> | undefined)?.[file] !== undefined);
    t.ok(configMap, `${file} is in a ConfigMap under its file name`);
    if (!configMap) continue;
    t.equal(`${(configMap.data as Record<string, string>)[file]}\n`, readFileSync(path.join(dashboardsDir, file), 'utf8'), `${file}: the chart carries the dashboard as is`);
    t.same([configMap.metadata.namespace, configMap.metadata.annotations], ['grafana', { grafana_folder: 'ProbePilot' }], `${file}: in the sidecar's namespace, with the folder annotation`);
  }
  t.notOk((await helmTemplate()).objects.some((o) => o.metadata.labels?.grafana_dashboard !== undefined), 'none by default');
});

/** Leaf values (dotted paths) with no comment of their own or on an enclosing key. */
function undocumentedValues(map: YAMLMap, prefix: string, inherited: boolean): string[] {
  return map.items.flatMap((pair, index) => {
    const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
    const at = prefix ? `${prefix}.${key}` : key;
    // yaml attaches the comment above a map's first key to the map itself.
    const documented = inherited || Boolean((isScalar(pair.key) && pair.key.commentBefore) || (index === 0 && map.commentBefore));
    if (isMap(pair.value) && pair.value.items.length > 0) return undocumentedValues(pair.value, at, documented);
    return documented ? [] : [at];
  });
}

t.test('securityRules.rules ship in their own ConfigMap, mounted where the agent reads them, and a change does not roll the pods', async (t) => {
  const rules = readFileSync(defaultRulesPath, 'utf8');
  const rendered = await helmTemplate({ securityRules: { rules } });
  const configMaps = rendered.objects.filter((o) => o.kind === 'ConfigMap');
  validateAll(t, configMaps);
  const rulesMap = configMaps.find((o) => o.metadata.name === 'pp-probepilot-security-rules');
  const text = (rulesMap?.data as Record<string, string> | undefined)?.['security-rules.yaml'];
  t.equal(text, rules, 'the rules as given');
  t.equal(parseRuleFile('security-rules.yaml', text ?? '').length, 6, 'and the agent accepts them');
  const mainConfig = configMaps.find((o) => o.metadata.name === 'pp-probepilot')!.data as Record<string, string>;
  t.equal(resolveConfig({ file: parseYaml(mainConfig['config.yaml']!) }).security.rules.path, '/etc/probepilot-rules/security-rules.yaml', 'the agent is pointed at the mounted file');
  const daemonSet = daemonSetOf(rendered);
  const mount = agentContainer(daemonSet).volumeMounts?.find((m) => m.mountPath === '/etc/probepilot-rules');
  t.match(mount, { readOnly: true }, 'a read-only directory mount (no subPath: ConfigMap updates reach it)');
  t.equal(mount?.subPath, undefined);
  t.equal(daemonSet.spec?.template.spec?.volumes?.find((v) => v.name === mount?.name)?.configMap?.name, 'pp-probepilot-security-rules');
  const changed = daemonSetOf(await helmTemplate({ securityRules: { rules: rules.replace('severity: medium', 'severity: high') } }));
  t.equal(changed.spec?.template.metadata?.annotations?.['checksum/config'], daemonSet.spec?.template.metadata?.annotations?.['checksum/config'], 'the agent reloads changed rules itself');
  const defaults = await helmTemplate();
  t.notOk(defaults.objects.some((o) => o.metadata.name === 'pp-probepilot-security-rules'), 'none by default: the shipped rules');
  t.equal(resolveConfig({ file: renderedConfig(defaults) }).security.rules.path, '');
});

t.test('every value in values.yaml is documented', async (t) => {
  const doc = parseDocument(readFileSync(path.join(chartDir, 'values.yaml'), 'utf8'));
  if (!isMap(doc.contents)) throw new Error('values.yaml is not a mapping');
  t.same(undocumentedValues(doc.contents, '', false), []);
});

t.test('the README explains installing with Helm and every permission the chart asks for', async (t) => {
  const readme = readFileSync(path.join(projectRoot, 'README.md'), 'utf8');
  const start = readme.indexOf('## Install on Kubernetes with Helm');
  t.ok(start >= 0, 'the README has the section');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  t.match(section, /helm install probepilot charts\/probepilot/);
  const daemonSet = daemonSetOf(await helmTemplate({ securityContext: { sysResource: true, mountFilesystems: true } }));
  for (const capability of addedCapabilities(daemonSet)) t.match(section, `\`CAP_${capability}\``, `CAP_${capability} is explained`);
  for (const mount of agentContainer(daemonSet).volumeMounts ?? []) t.match(section, `\`${mount.mountPath}\``, `${mount.mountPath} is explained`);
  for (const field of ['hostNetwork', 'hostPID', 'seccompProfile', 'appArmorProfile']) t.match(section, `\`${field}\``, `${field} is explained`);
  for (const row of ['charts/', 'servicemonitors/', 'Dockerfile']) t.match(readme, `| \`${row}\``, `layout row for ${row}`);
});

t.test('TLS, tokens, a NetworkPolicy and an authenticated ServiceMonitor render valid objects the agent accepts', async (t) => {
  const values = {
    config: { auth: { mode: 'tokens' }, grpcListen: '0.0.0.0:9743' },
    tls: { secretName: 'agent-tls' },
    tokens: { secretName: 'agent-tokens', keys: ['tokens.yaml', 'more.yaml'] },
    networkPolicy: { enabled: true, from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }] },
    serviceMonitor: { enabled: true, authorization: { name: 'scrape-token', key: 'token' }, tlsConfig: { ca: { secret: { name: 'agent-tls', key: 'ca.crt' } }, serverName: 'probepilot' } },
  };
  const rendered = await helmTemplate(values);
  validateAll(t, rendered.objects);
  const config = resolveConfig({ file: renderedConfig(rendered) });
  t.same(config.tls, { certFile: '/etc/probepilot-tls/tls.crt', keyFile: '/etc/probepilot-tls/tls.key', clientCaFile: '', reloadIntervalSeconds: 10 }, 'the agent reads the mounted Secret');
  t.same(config.auth.tokenFiles, ['/etc/probepilot-tokens/tokens.yaml', '/etc/probepilot-tokens/more.yaml']);
  const daemonSet = daemonSetOf(rendered);
  const container = agentContainer(daemonSet);
  t.same(
    (container.volumeMounts ?? []).filter((m) => m.mountPath.startsWith('/etc/probepilot-')).map((m) => [m.mountPath, m.readOnly]),
    [['/etc/probepilot-tls', true], ['/etc/probepilot-tokens', true]],
  );
  const secrets = (daemonSet.spec?.template.spec?.volumes ?? []).flatMap((v) => (v.secret ? [v.secret.secretName] : []));
  t.same(secrets, ['agent-tls', 'agent-tokens'], 'whole Secret volumes (renewals reach the files)');
  t.equal(container.readinessProbe?.httpGet?.scheme, 'HTTPS', 'probes speak TLS');
  const monitor = rendered.one('ServiceMonitor') as unknown as IServiceMonitor;
  const endpoint = monitor.spec.endpoints?.[0];
  t.match(endpoint, { scheme: 'https', authorization: { type: 'Bearer', credentials: { name: 'scrape-token', key: 'token' } }, tlsConfig: { serverName: 'probepilot' } });
  const policy = rendered.one('NetworkPolicy') as unknown as INetworkPolicy;
  t.same(policy.spec?.ingress?.[0]?.ports, [{ port: 9742, protocol: 'TCP' }, { port: 9743, protocol: 'TCP' }], 'the metrics/API port and the gRPC port');
  t.same(policy.spec?.ingress?.[0]?.from, values.networkPolicy.from);

  const mutual = await helmTemplate({ tls: { secretName: 'agent-tls', clientCa: true }, networkPolicy: { enabled: true }, serviceMonitor: { enabled: true } });
  validateAll(t, mutual.objects);
  t.equal(resolveConfig({ file: renderedConfig(mutual) }).tls.clientCaFile, '/etc/probepilot-tls/ca.crt');
  t.ok(agentContainer(daemonSetOf(mutual)).livenessProbe?.tcpSocket, 'with mutual TLS the probes check the port only');
  t.match((mutual.one('ServiceMonitor') as unknown as IServiceMonitor).spec.endpoints?.[0], { bearerTokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token', scheme: 'https' }, 'by default Prometheus sends its service account token');
  t.same((mutual.one('NetworkPolicy') as unknown as INetworkPolicy).spec?.ingress, [], 'no peers listed: nothing admitted (a rule without from would admit everyone)');
});

t.test('security and customProbes values reach the agent; customProbes.hostPath is mounted read-only and loaded', async (t) => {
  const defaults = resolveConfig({ file: renderedConfig(await helmTemplate()) });
  t.same(defaults.security, resolveConfig().security, 'the chart\'s security defaults are the agent\'s');
  t.same(defaults.customProbes, { paths: [], disabled: [] }, 'no custom probes by default');
  const values = {
    config: {
      security: { enabled: true, watchedPaths: ['/etc/'], namespaces: { include: ['shop'], exclude: ['kube-system'] }, cgroups: { exclude: ['/system.slice/cron.service'] }, nodeProcesses: 'include' },
      customProbes: { paths: ['/opt/probes/faults.yaml'], disabled: ['rtt'] },
    },
    customProbes: { hostPath: '/var/lib/probepilot-probes' },
  };
  const rendered = await helmTemplate(values);
  validateAll(t, rendered.objects);
  const config = resolveConfig({ file: renderedConfig(rendered) });
  t.same(config.security.namespaces, { include: ['shop'], exclude: ['kube-system'] }, 'namespaces filters as given');
  t.same(config.security.cgroups, { include: [], exclude: ['/system.slice/cron.service'] }, 'cgroup filters as given');
  t.equal(config.security.nodeProcesses, 'include');
  t.same(config.security.watchedPaths, ['/etc/'], 'a list replaces the default, it is not merged into it');
  t.same(config.customProbes, { paths: ['/opt/probes/faults.yaml', '/etc/probepilot-custom-probes'], disabled: ['rtt'] }, 'the mounted directory joins the given paths');
  t.ok(hostMounts(daemonSetOf(rendered)).includes('/etc/probepilot-custom-probes <- /var/lib/probepilot-probes (ro)'), 'the probes directory is mounted read-only');
  const bad = await helmTemplate({ config: { security: { nodeProcesses: 'sometimes' } } });
  t.throws(() => resolveConfig({ file: renderedConfig(bad) }), { message: /security\.nodeProcesses.*auto, include, exclude/ }, 'a bad value names its key');
});
