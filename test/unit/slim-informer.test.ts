// The slim list/watch against the fake API server's real protocol: records
// follow adds and deletes, a 410 Gone lists again, an outage keeps the last
// records with a bounded number of requests, and the informer recovers.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { nodeAddressInformer, loadKubeConfig } from '../../src/identity/kubernetes.js';
import { createLogger } from '../../src/log.js';
import { nodeObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';

const addresses = (records: ReadonlyMap<string, readonly string[]>) => [...records.values()].flat().sort();

t.test('node addresses follow list, watch, 410 Gone and an outage', async (t) => {
  const { api, kubeconfig } = await startFakeKubeApi(t);
  api.upsertNode(nodeObject('a', '10.0.0.1'));
  api.upsertNode(nodeObject('b', '10.0.0.2'));
  const informer = nodeAddressInformer(loadKubeConfig(kubeconfig), createLogger('silent'));
  await informer.start();
  t.teardown(() => informer.stop());
  t.same(addresses(informer.records), ['10.0.0.1', '10.0.0.2'], 'the list, InternalIPs only (not Hostname)');
  t.equal(informer.apiUp, true);

  api.upsertNode(nodeObject('c', '10.0.0.3'));
  api.deleteNode('a');
  await waitFor(() => addresses(informer.records).join() === '10.0.0.2,10.0.0.3', { timeoutMs: 5000, what: 'the watch to add c and remove a' });
  t.pass('the watch adds and removes');

  const listsBefore = api.requests.filter((r) => r.startsWith('/api/v1/nodes?') && !r.includes('watch=true')).length;
  api.expireWatches();
  api.upsertNode(nodeObject('d', '10.0.0.4'));
  await waitFor(() => addresses(informer.records).includes('10.0.0.4'), { timeoutMs: 5000, what: 'the new node after a 410' });
  const listsAfter = api.requests.filter((r) => r.startsWith('/api/v1/nodes?') && !r.includes('watch=true')).length;
  t.equal(listsAfter, listsBefore + 1, 'a 410 Gone is answered with one new list');

  const requestsBefore = api.requests.length;
  api.setFailing(true);
  await waitFor(() => !informer.apiUp, { timeoutMs: 5000, what: 'the outage to be noticed' });
  await sleep(3000);
  const outageRequests = api.requests.length - requestsBefore;
  t.ok(outageRequests <= 6, `a 3 s outage costs ${outageRequests} requests (backoff from 0.5 s, doubling)`);
  t.same(addresses(informer.records), ['10.0.0.2', '10.0.0.3', '10.0.0.4'], 'the last known records stay during the outage');
  api.setFailing(false);
  api.deleteNode('b');
  await waitFor(() => informer.apiUp && !addresses(informer.records).includes('10.0.0.2'), { timeoutMs: 20_000, what: 'recovery after the outage' });
  t.same(addresses(informer.records), ['10.0.0.3', '10.0.0.4'], 'after the outage, what changed meanwhile is caught up');
});
