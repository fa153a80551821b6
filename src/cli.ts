#!/usr/bin/env node
// probepilot: the agent (`probepilot agent`) and, as they land, its client commands.
import { Command, Option } from 'commander';
import { ConfigError, readConfigFile, resolveConfig } from './config.js';
import { createLogger, logLevels } from './log.js';
import { Agent } from './agent.js';
import { agentVersion } from './version.js';

const program = new Command('probepilot').description('eBPF observability agent for Kubernetes nodes').version(agentVersion);

program
  .command('agent')
  .description('run the node agent: attach collectors and serve /metrics')
  .option('--listen <host:port>', 'address of the HTTP server (default 0.0.0.0:9742, env PROBEPILOT_LISTEN)')
  .option('--config <file>', 'YAML or JSON config file (env PROBEPILOT_CONFIG)')
  .addOption(new Option('--log-level <level>', 'log level (env PROBEPILOT_LOG_LEVEL)').choices(logLevels))
  .action(async (options: { listen?: string; config?: string; logLevel?: string }) => {
    const flags: Record<string, string> = {};
    if (options.listen !== undefined) flags.listen = options.listen;
    if (options.logLevel !== undefined) flags.logLevel = options.logLevel;
    const configFile = options.config ?? process.env.PROBEPILOT_CONFIG;
    const config = resolveConfig({ file: configFile ? readConfigFile(configFile) : undefined, env: process.env, flags });
    const log = createLogger(config.logLevel);
    const agent = new Agent(config, log);
    let stopping = false;
    const shutdown = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      agent.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => shutdown('SIGINT'));
    try {
      await agent.start();
    } catch (err) {
      await agent.stop().catch(() => undefined);
      // A setting only checkable at start (a kubeconfig file) is a config error like any other.
      if (err instanceof ConfigError) {
        process.stderr.write(`probepilot: ${err.message}\n`);
        process.exit(2);
      }
      log.fatal({ err }, 'agent failed to start');
      process.exit(1);
    }
  });

program.parseAsync().catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`probepilot: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
});
