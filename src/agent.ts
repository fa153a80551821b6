// Wires the agent together: host preparation, identity, collectors, the
// Prometheus exporter and the HTTP server, and takes it all down again.
import { existsSync } from 'node:fs';
import os from 'node:os';
import { loadAddon, type NativeAddon } from './bpf/addon.js';
import { ConfigError, type AgentConfig } from './config.js';
import { appliesLive, changedKeys, effectiveConfig, type ConfigChange } from './reload.js';
import type { Logger } from './log.js';
import { describeError } from './errors.js';
import { ensureBpffs, ensureTracefs, findCgroup2Mount, onBpffs } from './system/mounts.js';
import { CgroupPaths } from './identity/cgroups.js';
import { NetnsWorkloads } from './identity/netns.js';
import { StandaloneIdentity, type Identity } from './identity/identity.js';
import type { PodWatcher } from './identity/kubernetes.js';
import type { SlimInformer } from './identity/slim-informer.js';
import type { CollectorContext } from './collectors/collector.js';
import { CollectorManager } from './collectors/manager.js';
import { collectorFactories } from './collectors/index.js';
import { customPrefix } from './collectors/custom.js';
import { PrometheusExporter } from './exporters/prometheus.js';
import { OtlpExporter } from './exporters/otlp.js';
import { agentVersion } from './version.js';
import { buildServer } from './server.js';
import { AgentEvents } from './api/events.js';
import { AgentService } from './api/service.js';
import { GrpcApi } from './api/grpc.js';
import { Guard } from './auth/guard.js';
import { KubernetesReviewer } from './auth/kubernetes.js';
import { watchTls, tlsEnabled } from './auth/tls.js';
import { hostChecks } from './doctor.js';
import { EventPipeline } from './events/pipeline.js';
import { SecurityMonitor } from './events/security.js';

export class Agent {
  private manager: CollectorManager | undefined;
  private server: ReturnType<typeof buildServer>['app'] | undefined;
  private stopTlsWatch: (() => void) | undefined;
  private statsHandle: number | undefined;
  private addon: NativeAddon | undefined;
  private ready = false;
  private pods: PodWatcher | undefined;
  /** Node addresses and other nodes' pods, for naming traffic peers. */
  private informers: Array<Pick<SlimInformer<object, unknown>, 'stop'>> = [];
  private otlp: OtlpExporter | undefined;
  private readonly events = new AgentEvents();
  private grpc: GrpcApi | undefined;
  private pipeline: EventPipeline | undefined;
  private security: SecurityMonitor | undefined;
  private nodeName: string | undefined;

  private ctx: CollectorContext | undefined;

  /** `reloadConfig` reads the configuration sources again (file, environment, flags); without it reload is refused. */
  constructor(
    private config: AgentConfig,
    private readonly log: Logger,
    private readonly reloadConfig?: () => AgentConfig,
  ) {}

  /**
   * Reads the configuration again and applies what a running agent can: the
   * collectors (enabled, disabled, reconfigured). An invalid configuration
   * throws (ConfigError) and changes nothing.
   */
  async reload(): Promise<ConfigChange> {
    if (!this.reloadConfig) throw new ConfigError('--config', 'this agent was started without configuration sources to read again');
    const next = this.reloadConfig();
    const current = this.config;
    const changed = changedKeys(current, next);
    const change: ConfigChange = { applied: changed.filter(appliesLive), restartRequired: changed.filter((k) => !appliesLive(k)) };
    const effective = effectiveConfig(current, next);
    // First, as it may refuse the reload (a bad rule file: ConfigError) before anything changed.
    this.security?.rules.reload(effective.security.rules);
    const manager = this.manager;
    const ctx = this.ctx;
    if (manager && ctx) {
      // Fresh collector instances read the context: it must hold the new configuration first.
      ctx.config = effective;
      const sections = new Set(change.applied.filter((k) => k.startsWith('collectors.')).map((k) => k.split('.')[1]!));
      for (const name of sections) {
        const enabled = effective.collectors[name as keyof AgentConfig['collectors']].enabled;
        const wasEnabled = current.collectors[name as keyof AgentConfig['collectors']].enabled;
        if (enabled !== wasEnabled) await manager.setEnabled(name, enabled);
        else if (enabled) await manager.reconfigure(name, effective);
      }
    }
    this.config = effective;
    this.log.info(change, 'configuration reloaded');
    return change;
  }

  /** Starts collectors and the server; resolves with the bound address. */
  async start(): Promise<string> {
    const { log } = this;
    for (const result of hostChecks(this.config)) {
      const { verdict, ...fields } = result;
      log[verdict === 'PASS' ? 'info' : 'warn']({ ...fields, verdict }, 'preflight check');
    }
    this.prepareHost();
    const { config } = this;
    const addon = loadAddon();
    this.addon = addon;
    if (config.bpfStats) {
      try {
        this.statsHandle = addon.enableStats();
        log.info('BPF run-time statistics enabled (they cost time per program run; turn bpfStats off when not needed)');
      } catch (err) {
        log.warn({ err: describeError(err) }, 'cannot enable BPF run-time statistics');
      }
    }
    const cgroupRoot = config.cgroupRoot || findCgroup2Mount();
    if (!cgroupRoot) log.warn('no cgroup v2 mount found: workloads fall back to the node (cgroup="/")');
    const identity = await this.createIdentity(new CgroupPaths(cgroupRoot ?? '/nonexistent'), new NetnsWorkloads((p) => addon.netnsId(p)));
    const ctx: CollectorContext = { config, log, addon, identity, events: this.events };
    this.ctx = ctx;
    const disabled = new Set(Object.entries(config.collectors).filter(([, section]) => !section.enabled).map(([name]) => name));
    for (const probe of config.customProbes.disabled) disabled.add(`${customPrefix}${probe}`);
    const manager = new CollectorManager(collectorFactories(ctx), log, this.statsHandle !== undefined, disabled, this.events);
    this.manager = manager;

    const pipeline = new EventPipeline({ config, log, addon, identity });
    this.pipeline = pipeline;
    const security = new SecurityMonitor({ config, log, identity, pipeline });
    this.security = security;
    const collect = async () => [...(await manager.collect()), ...identity.metrics(), ...pipeline.metrics(), ...security.metrics(), ...(this.otlp?.metrics() ?? [])];
    if (config.otlp.endpoint) {
      this.otlp = new OtlpExporter(config.otlp, collect, { version: agentVersion, nodeName: this.nodeName }, log.child({ component: 'otlp' }));
    }
    const exporter = new PrometheusExporter([...manager.descriptors(), ...identity.families, ...pipeline.families, ...security.families, ...(this.otlp?.families ?? [])], collect);
    const service = new AgentService({
      events: this.events,
      pipeline,
      manager,
      identity,
      nodeName: this.nodeName ?? os.hostname(),
      bpfStats: this.statsHandle !== undefined,
      reload: () => this.reload(),
      collectionMaxAgeMs: config.collectionMaxAgeSeconds * 1000,
      collectionAhead: config.collectionAhead,
    });
    const reviewer = config.auth.mode === 'kubernetes' ? await KubernetesReviewer.create(config.kubernetes.kubeconfig, config.auth.cacheTtlSeconds * 1000, log.child({ component: 'auth' })) : undefined;
    const guard = new Guard(config, { log, reviewer, namespaces: () => this.pods?.namespaces() ?? [] });
    const server = buildServer({ log, exporter, ready: () => this.ready, collectors: () => manager.states(), service, guard, tls: config.tls, limits: config.limits });
    this.server = server.app;
    if (tlsEnabled(config.tls)) this.stopTlsWatch = watchTls(config.tls, log.child({ component: 'tls' }), server.setSecureContext);
    const bound = await this.server.listen({ host: config.listen.host, port: config.listen.port });
    // fastify names the scheme after its own options; the node server under it speaks TLS when the files are set.
    const address = tlsEnabled(config.tls) ? bound.replace(/^http:/, 'https:') : bound;
    log.info({ address, mode: identity.mode, cgroupRoot: cgroupRoot ?? null, kernel: os.release(), auth: config.auth.mode, tls: tlsEnabled(config.tls), mutualTls: config.tls.clientCaFile !== '' }, 'listening');
    if (config.grpcListen) {
      this.grpc = new GrpcApi(service, log.child({ component: 'grpc' }), guard, config.tls);
      const port = await this.grpc.listen(config.grpcListen);
      log.info({ address: `${config.grpcListen.host}:${port}` }, 'gRPC API listening');
    }
    await manager.start();
    await security.start();
    this.ready = true;
    return address;
  }

  async stop(): Promise<void> {
    this.ready = false;
    await this.grpc?.close();
    await this.server?.close();
    this.stopTlsWatch?.();
    await this.security?.stop();
    await this.pipeline?.stop();
    await this.otlp?.stop();
    // Pins removed under us (probepilot agent --cleanup in the container before an uninstall): leave nothing behind.
    const keepRunning = this.config.pins.enabled && existsSync(this.config.pins.root);
    if (this.config.pins.enabled && !keepRunning) this.log.info({ pinRoot: this.config.pins.root }, 'the pins were removed while the agent ran: detaching everything');
    await this.manager?.stop({ keepRunning });
    await this.pods?.stop();
    for (const informer of this.informers) informer.stop();
    if (this.statsHandle !== undefined) this.addon?.disableStats(this.statsHandle);
    this.statsHandle = undefined;
    this.log.info({ keepRunning, pinRoot: keepRunning ? this.config.pins.root : null }, keepRunning ? 'stopped; programs keep counting through their pins until the next start (probepilot agent --cleanup removes them)' : 'stopped; all programs detached');
  }

  /** Standalone by default; in Kubernetes mode the pods of this node are listed before collectors start, so first scrapes carry pod labels. */
  private async createIdentity(cgroups: CgroupPaths, netns: NetnsWorkloads): Promise<Identity> {
    const { kubernetes } = this.config;
    if (!kubernetes.enabled) return new StandaloneIdentity(cgroups, netns);
    const nodeName = kubernetes.nodeName || process.env.NODE_NAME || os.hostname();
    this.nodeName = nodeName;
    const log = this.log.child({ component: 'kubernetes' });
    // Loaded only in this mode: the client library costs about 85 MB of RSS that a standalone agent need not pay.
    const { clusterPodInformer, KubernetesIdentity, loadKubeConfig, nodeAddressInformer, PodWatcher } = await import('./identity/kubernetes.js');
    const kc = loadKubeConfig(kubernetes.kubeconfig);
    this.pods = new PodWatcher({ kc, nodeName, relistIntervalMs: kubernetes.relistIntervalSeconds * 1000, log, events: this.events });
    const nodes = kubernetes.nodePeers ? nodeAddressInformer(kc, log) : undefined;
    const clusterPods = kubernetes.clusterPodPeers ? clusterPodInformer(kc, nodeName, log) : undefined;
    this.informers = [nodes, clusterPods].filter((i) => i !== undefined);
    await Promise.all([this.pods.start(), nodes?.start(), clusterPods?.start()]);
    log.info({ nodeName, pods: this.pods.size, apiUp: this.pods.apiUp, nodes: nodes?.records.size, clusterPods: clusterPods?.records.size }, 'watching the pods of this node');
    return new KubernetesIdentity(cgroups, netns, this.pods, nodes, clusterPods);
  }

  /** bpffs and tracefs are mounted when missing, so a bare container or host works; failures only limit what needs them. */
  private prepareHost(): void {
    if (process.getuid?.() !== 0) {
      this.log.warn('not running as root: loading BPF needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; collectors that lack them report why');
    }
    for (const [what, ensure] of [
      ['bpffs', ensureBpffs],
      ['tracefs', ensureTracefs],
    ] as const) {
      try {
        const { path, mounted } = ensure();
        if (mounted) this.log.info({ path }, `mounted ${what}`);
      } catch (err) {
        this.log.warn({ err: describeError(err) }, `cannot mount ${what}`);
      }
    }
    // Without bpffs nothing can be pinned: every collector would fail to load. They run unpinned instead.
    if (this.config.pins.enabled && !onBpffs(this.config.pins.root)) {
      this.log.warn({ pinRoot: this.config.pins.root }, 'pins.root is not on a bpffs (not mounted, and it cannot be mounted here): running without pins, counters start over at each restart');
      this.config = { ...this.config, pins: { ...this.config.pins, enabled: false } };
    }
  }
}
