// A real Alertmanager (the Debian 0.25 binary) on loopback that routes every
// alert to a webhook receiver inside the test, which keeps what it was sent.
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { onFreePort, ServiceProcess } from './service-process.js';

/** One alert of a webhook notification (Alertmanager's webhook payload, version 4). */
export interface NotifiedAlert {
  status: 'firing' | 'resolved';
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
}

export interface Notification {
  receivedAt: number;
  status: 'firing' | 'resolved';
  alerts: NotifiedAlert[];
}

export interface AlertmanagerServer {
  /** host:port, as Prometheus' alerting config wants it. */
  readonly address: string;
  readonly notifications: readonly Notification[];
  /** Resolves with the first notification for which match returns true, waiting up to timeoutMs. */
  waitForNotification(match: (n: Notification) => boolean, timeoutMs: number, what: string): Promise<Notification>;
  log(): string;
  /** Idempotent. */
  stop(): Promise<void>;
}

async function startWebhook(notifications: Notification[]): Promise<Server> {
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const payload = JSON.parse(body) as Omit<Notification, 'receivedAt'>;
      notifications.push({ receivedAt: Date.now(), status: payload.status, alerts: payload.alerts });
      res.writeHead(200).end();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

/**
 * Alertmanager with one route to the webhook: no grouping delay and a 1 s
 * group interval, so a firing alert and its resolution arrive within seconds;
 * resolved notifications are sent.
 */
export async function startAlertmanager(): Promise<AlertmanagerServer> {
  const notifications: Notification[] = [];
  const webhook = await startWebhook(notifications);
  const hook = `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/hook`;
  const dir = mkdtempSync(path.join(tmpdir(), 'probepilot-alertmanager-'));
  writeFileSync(
    path.join(dir, 'alertmanager.yml'),
    JSON.stringify({
      route: { receiver: 'test', group_by: ['alertname', 'instance'], group_wait: '0s', group_interval: '1s', repeat_interval: '1h' },
      receivers: [{ name: 'test', webhook_configs: [{ url: hook, send_resolved: true }] }],
    }),
  );
  const cleanup = async (service?: ServiceProcess) => {
    await service?.terminate();
    rmSync(dir, { recursive: true, force: true });
    await new Promise<void>((resolve) => webhook.close(() => resolve()));
  };
  let service: ServiceProcess;
  let port: number;
  try {
    [service, port] = await onFreePort(async (p) => {
      const args = [
        `--config.file=${path.join(dir, 'alertmanager.yml')}`,
        `--storage.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${p}`,
        // No gossip: a lone Alertmanager needs no cluster port.
        '--cluster.listen-address=',
      ];
      return [await ServiceProcess.start('Alertmanager', 'prometheus-alertmanager', args, `http://127.0.0.1:${p}/-/ready`), p] as const;
    });
  } catch (err) {
    await cleanup();
    throw err;
  }
  let stopped: Promise<void> | undefined;
  return {
    address: `127.0.0.1:${port}`,
    notifications,
    waitForNotification: (match, timeoutMs, what) => service.waitFor(() => notifications.find(match), timeoutMs, what),
    log: () => service.log(),
    stop: () => (stopped ??= cleanup(service)),
  };
}
