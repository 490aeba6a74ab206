// A real OAuth authorization server for Mandate's identity tests: `oidc-provider` (panva, certified
// OpenID provider) issuing RFC 9068 JWT access tokens (`typ: at+jwt`) by `client_credentials`,
// with RFC 8707 resource indicators becoming `aud`.
//
// Usage: node idp.mjs '<json config>'   (or the config in the env var IDP_CONFIG)
// {
//   "port": 0,                              // 0: any free port on 127.0.0.1
//   "clients": [{ "client_id": "bot", "client_secret": "…",
//                 "token_endpoint_auth_method": "client_secret_basic",   // or client_secret_post
//                 "claims": { "tenant": "acme", "groups": ["finance"] } }], // added to its tokens
//   "scopes": ["mcp:tools"],                // scopes every resource server offers
//   "jwks": { "keys": [ <private JWKs> ] }, // optional: fixed signing keys (tests sign with them)
//   "ttl": 300                              // access token lifetime, seconds
// }
// Prints `idp listening on http://127.0.0.1:<port>` (the issuer) once it serves.
//
// oidc-provider wants https issuers in production; on http://127.0.0.1 it runs with development
// warnings only, which is what a loopback test needs (Mandate allows http issuers on loopback).
import { createRequire } from 'node:module';
import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', '..', '.peers', 'npm', 'package.json'));
const { default: Provider } = await import(require.resolve('oidc-provider'));

const config = JSON.parse(process.argv[2] ?? process.env.IDP_CONFIG ?? '{}');
const port = config.port ?? 0;
const ttl = config.ttl ?? 300;
const scopes = config.scopes ?? [];
const clients = config.clients ?? [];
const claimsOf = new Map(clients.map((c) => [c.client_id, c.claims ?? {}]));

function defaultJwks() {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'idp-es256', alg: 'ES256', use: 'sig' }] };
}
const jwks = config.jwks ?? defaultJwks();
const signingAlg = jwks.keys[0].alg ?? 'ES256';

// The port must be known before the provider exists (it is part of the issuer).
import net from 'node:net';
async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => resolve(p));
    });
  });
}
const listenPort = port === 0 ? await freePort() : port;
const issuer = `http://127.0.0.1:${listenPort}`;

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    scope: scopes.join(' ') || undefined,
    id_token_signed_response_alg: signingAlg,
  })),
  jwks,
  scopes: scopes.length ? scopes : undefined,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Any resource asked for is an audience (the test decides what Mandate accepts).
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => ({
        audience: resourceIndicator,
        scope: scopes.join(' '),
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: signingAlg } },
      }),
    },
  },
  extraTokenClaims: async (_ctx, token) => claimsOf.get(token.clientId),
  ttl: { ClientCredentials: ttl, AccessToken: ttl },
});
provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('idp grant.error', err.message, err.error_description ?? ''));

const server = provider.listen(listenPort, '127.0.0.1', () => {
  console.log(`idp listening on ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
