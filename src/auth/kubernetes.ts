// Delegated authentication and authorization (auth.mode=kubernetes), as
// kube-rbac-proxy does: a bearer token is checked with a TokenReview, the
// request with a SubjectAccessReview; both answers are cached for
// auth.cacheTtlSeconds. While the API server is unreachable, cached answers
// are honoured until they expire and every other call is refused.
import type { AuthenticationV1Api, AuthorizationV1Api } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { describeError } from '../errors.js';
import { tokenDigest } from './tokens.js';
import type { GuardedAccess } from './principal.js';

export const apiGroup = 'probepilot.io';

export interface ReviewedUser {
  username: string;
  uid: string;
  groups: string[];
}

/** The API server could not be asked: the caller is refused, not let through. */
export class ReviewUnavailableError extends Error {}

interface Cached<T> {
  value: T;
  expires: number;
}

export class KubernetesReviewer {
  private readonly authn: AuthenticationV1Api;
  private readonly authz: AuthorizationV1Api;
  private readonly users = new Map<string, Cached<ReviewedUser | null>>();
  private readonly decisions = new Map<string, Cached<boolean>>();
  private unreachableSince: number | undefined;

  private constructor(
    apis: { authn: AuthenticationV1Api; authz: AuthorizationV1Api },
    private readonly ttlMs: number,
    private readonly log: Logger,
  ) {
    this.authn = apis.authn;
    this.authz = apis.authz;
  }

  /** The client library is loaded here, not at the agent's start: it costs about 85 MB of RSS that an agent without delegated auth need not pay. */
  static async create(kubeconfig: string, ttlMs: number, log: Logger): Promise<KubernetesReviewer> {
    const [{ AuthenticationV1Api, AuthorizationV1Api }, { loadKubeConfig }] = await Promise.all([import('@kubernetes/client-node'), import('../identity/kubernetes.js')]);
    const kc = loadKubeConfig(kubeconfig);
    return new KubernetesReviewer({ authn: kc.makeApiClient(AuthenticationV1Api), authz: kc.makeApiClient(AuthorizationV1Api) }, ttlMs, log);
  }

  /** The token's user, or null for a token the API server does not accept. */
  authenticate(token: string): Promise<ReviewedUser | null> {
    return this.cached(this.users, tokenDigest(token), async () => {
      const review = await this.authn.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token } } });
      const status = review.status;
      if (!status?.authenticated || !status.user?.username) return null;
      return { username: status.user.username, uid: status.user.uid ?? '', groups: status.user.groups ?? [] };
    });
  }

  /** Whether the user may make this call; with a namespace, the resource attributes are asked in that namespace. */
  authorize(user: ReviewedUser, access: GuardedAccess, namespace?: string): Promise<boolean> {
    const attributes =
      access.nonResourcePath !== undefined && namespace === undefined
        ? { nonResourceAttributes: { path: access.nonResourcePath, verb: access.verb } }
        : {
            resourceAttributes: {
              group: apiGroup,
              resource: access.resource ?? 'metrics',
              verb: access.verb,
              ...(access.subresource ? { subresource: access.subresource } : {}),
              ...(namespace !== undefined ? { namespace } : {}),
            },
          };
    const key = JSON.stringify([user.username, user.uid, user.groups, attributes]);
    return this.cached(this.decisions, key, async () => {
      const review = await this.authz.createSubjectAccessReview({
        body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SubjectAccessReview', spec: { user: user.username, uid: user.uid, groups: user.groups, ...attributes } },
      });
      return review.status?.allowed === true && review.status.denied !== true;
    });
  }

  private async cached<T>(cache: Map<string, Cached<T>>, key: string, ask: () => Promise<T>): Promise<T> {
    const now = Date.now();
    const hit = cache.get(key);
    if (hit && hit.expires > now) return hit.value;
    let value: T;
    try {
      value = await ask();
    } catch (err) {
      if (this.unreachableSince === undefined) {
        this.unreachableSince = now;
        this.log.warn({ err: describeError(err) }, 'Kubernetes API server unreachable for TokenReview/SubjectAccessReview: refusing identities without a cached decision; cached decisions are honoured until they expire');
      }
      throw new ReviewUnavailableError(`the Kubernetes API server cannot review this request: ${describeError(err)}`);
    }
    if (this.unreachableSince !== undefined) {
      this.log.info({ unreachableSeconds: (now - this.unreachableSince) / 1000 }, 'Kubernetes API server reachable again for reviews');
      this.unreachableSince = undefined;
    }
    if (cache.size >= 10_000) {
      for (const [k, entry] of cache) if (entry.expires <= now) cache.delete(k);
      if (cache.size >= 10_000) cache.clear();
    }
    cache.set(key, { value, expires: now + this.ttlMs });
    return value;
  }
}
