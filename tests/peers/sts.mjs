// A real authorization server (npm `oidc-provider` 9.13.3) acting as the STS of Mandate's
// `rfc8693`, `entra-obo` and `id-jag` exchange profiles in the integration tests.
//
// oidc-provider authenticates the clients (client_secret_basic, client_secret_post), serves
// discovery, the JWKS and `client_credentials` (JWT access tokens per RFC 9068 through resource
// indicators); this file registers two grants it does not ship:
//
// - RFC 8693 token exchange: verifies the subject token (a Mandate subject assertion, verified
//   with Mandate's JWKS, or a token of this provider whose audience is the exchanging client),
//   allows only the targets in STS_TARGETS, narrows scopes to STS_SCOPES, and issues a JWT with
//   `aud` = the target and `act` = { sub: <client>, act: <earlier> }. With
//   `requested_token_type=urn:ietf:params:oauth:token-type:id-jag` it issues an ID-JAG
//   (`typ: oauth-id-jag+jwt`, `aud` = the `audience` parameter, `resource` = the target).
// - RFC 7523 jwt-bearer: with `requested_token_use=on_behalf_of` the Entra OBO shape (the
//   assertion is the user's token; the target is the scope's resource before `/.default`);
//   otherwise the ID-JAG redemption at the downstream's authorization server (this same provider).
//
// Tokens are signed with jose using the provider's own key (the one its JWKS publishes).
//
// Environment: STS_NODE_MODULES (the npm peers' node_modules), MANDATE_ISSUER, MANDATE_JWKS (URL), STS_TARGETS (space-separated), STS_SCOPES
// (space-separated), STS_TTL (seconds, default 300), STS_SECRET (client secret of `mandate` and
// `mandate-post`), STS_PKJWT_JWK (public JWK of the `private_key_jwt` client `mandate-pkjwt`),
// STS_PORT (default: any free port), STS_JWK (optional fixed private signing JWK, ES256). Prints `sts listening on <issuer>`. `GET /stats` returns the request counts,
// every subject token / assertion it received and the actor tokens it verified.

import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// The peers live in `.peers/npm/node_modules` (STS_NODE_MODULES), not beside this file.
const modules = process.env.STS_NODE_MODULES;
const load = (rel) => import(pathToFileURL(path.join(modules, rel)).href);
const { default: Provider, errors } = await load('oidc-provider/lib/index.js');
const jose = await load('jose/dist/webapi/index.js');

const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const ID_JAG = 'urn:ietf:params:oauth:token-type:id-jag';

const targets = (process.env.STS_TARGETS || '').split(' ').filter(Boolean);
const allowedScopes = new Set((process.env.STS_SCOPES || '').split(' ').filter(Boolean));
const ttl = Number(process.env.STS_TTL || 300);
const secret = process.env.STS_SECRET || 'mandate-secret';
const mandateIssuer = process.env.MANDATE_ISSUER;
const mandateJwks = process.env.MANDATE_JWKS ? jose.createRemoteJWKSet(new URL(process.env.MANDATE_JWKS)) : null;

// STS_JWK: a fixed private signing key (a test that plays the user's sign-in signs that user's
// access token with it, as this provider would have); otherwise a fresh one.
const fixed = process.env.STS_JWK ? JSON.parse(process.env.STS_JWK) : null;
const privateKey = fixed
  ? await jose.importJWK(fixed, 'ES256')
  : (await jose.generateKeyPair('ES256', { extractable: true })).privateKey;
const jwk = fixed ?? { ...(await jose.exportJWK(privateKey)), kid: 'sts-es256', alg: 'ES256', use: 'sig' };

const stats = { token_requests: 0, grants: {}, subjects: [], actors: [] };

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.STS_PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const grantTypes = [TE, JWT_BEARER, 'client_credentials'];
const provider = new Provider(issuer, {
  clients: [
    { client_id: 'mandate', client_secret: secret, grant_types: grantTypes, redirect_uris: [], response_types: [], id_token_signed_response_alg: 'ES256', token_endpoint_auth_method: 'client_secret_basic' },
    ...(process.env.STS_PKJWT_JWK ? [{ client_id: 'mandate-pkjwt', grant_types: grantTypes, redirect_uris: [], response_types: [], id_token_signed_response_alg: 'ES256', token_endpoint_auth_method: 'private_key_jwt', token_endpoint_auth_signing_alg: 'ES256', jwks: { keys: [JSON.parse(process.env.STS_PKJWT_JWK)] } }] : []),
    { client_id: 'mandate-post', client_secret: secret, grant_types: grantTypes, redirect_uris: [], response_types: [], id_token_signed_response_alg: 'ES256', token_endpoint_auth_method: 'client_secret_post' },
  ],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!targets.includes(resource)) throw new errors.InvalidTarget(`\`${resource}\` is not an allowed target`);
        return { scope: [...allowedScopes].join(' '), audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: ttl, jwt: { sign: { alg: 'ES256' } } };
      },
    },
  },
});

const own = jose.createLocalJWKSet({ keys: [{ ...jwk, d: undefined }] });

async function verifySubject(token, client) {
  const { iss } = jose.decodeJwt(token);
  if (mandateJwks && iss === mandateIssuer) {
    // Mandate's subject assertion: audience is this provider's token endpoint.
    const { payload } = await jose.jwtVerify(token, mandateJwks, { issuer: mandateIssuer, audience: `${issuer}/token` });
    return payload;
  }
  const { payload } = await jose.jwtVerify(token, own, { issuer, audience: client.clientId });
  return payload;
}

function narrow(requested) {
  const scopes = (requested || '').split(' ').filter(Boolean);
  for (const s of scopes) {
    if (s === 'needs_user') throw new errors.InteractionRequired('the user must sign in again (conditional access)');
    if (!allowedScopes.has(s)) throw new errors.InvalidScope(`scope \`${s}\` is not allowed`, s);
  }
  return scopes.join(' ');
}

async function sign(claims, typ) {
  const now = Math.floor(Date.now() / 1000);
  return new jose.SignJWT({ ...claims, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ })
    .setIssuer(issuer).setIssuedAt(now).setExpirationTime(now + ttl)
    .sign(privateKey);
}

async function subjectOf(ctx, token) {
  stats.subjects.push(token);
  try {
    return await verifySubject(token, ctx.oidc.client);
  } catch (e) {
    throw new errors.InvalidGrant(`subject token rejected: ${e.message}`);
  }
}

provider.registerGrantType(TE, async (ctx) => {
  stats.grants.token_exchange = (stats.grants.token_exchange || 0) + 1;
  const p = ctx.oidc.params;
  const subject = await subjectOf(ctx, p.subject_token);
  const target = p.resource || p.audience;
  if (!targets.includes(target)) throw new errors.InvalidTarget(`\`${target}\` is not an allowed target`);
  const scope = narrow(p.scope);
  const client = ctx.oidc.client.clientId;
  if (p.requested_token_type === ID_JAG) {
    const token = await sign({ sub: subject.sub, aud: p.audience === target ? issuer : p.audience, resource: target, client_id: client, scope }, 'oauth-id-jag+jwt');
    ctx.body = { access_token: token, issued_token_type: ID_JAG, token_type: 'N_A', expires_in: ttl, scope };
    return;
  }
  // An actor token must be this provider's own token for the exchanging client (RFC 8693
  // §2.1: it represents the acting party); its subject becomes `act.sub`.
  let actor = client;
  if (p.actor_token) {
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(p.actor_token, own, { issuer }));
    } catch (e) {
      throw new errors.InvalidGrant(`actor token rejected: ${e.message}`);
    }
    actor = payload.client_id || payload.sub;
    if (actor !== client) throw new errors.InvalidGrant('the actor token is not the exchanging client\'s');
    stats.actors.push({ sub: payload.sub, client_id: payload.client_id, aud: payload.aud, type: p.actor_token_type });
  }
  const act = { sub: actor, ...(subject.act ? { act: subject.act } : {}) };
  const token = await sign({ sub: subject.sub, aud: target, client_id: client, scope, act }, 'at+jwt');
  ctx.body = { access_token: token, issued_token_type: ACCESS_TOKEN, token_type: 'Bearer', expires_in: ttl, scope };
}, ['subject_token', 'subject_token_type', 'resource', 'audience', 'scope', 'requested_token_type', 'actor_token', 'actor_token_type']);

provider.registerGrantType(JWT_BEARER, async (ctx) => {
  const p = ctx.oidc.params;
  const client = ctx.oidc.client.clientId;
  if (p.requested_token_use === 'on_behalf_of') {
    stats.grants.on_behalf_of = (stats.grants.on_behalf_of || 0) + 1;
    const subject = await subjectOf(ctx, p.assertion);
    // Entra derives the audience from the scope: `<resource>/.default`.
    const scopes = (p.scope || '').split(' ').filter(Boolean);
    const dflt = scopes.find((s) => s.endsWith('/.default'));
    const target = dflt ? dflt.slice(0, -'/.default'.length) : targets[0];
    if (!targets.includes(target)) throw new errors.InvalidTarget(`\`${target}\` is not an allowed target`);
    const scope = narrow(scopes.filter((s) => !s.endsWith('/.default')).join(' '));
    const token = await sign({ sub: subject.sub, aud: target, client_id: client, scope, act: { sub: client } }, 'at+jwt');
    ctx.body = { access_token: token, token_type: 'Bearer', expires_in: ttl, ...(scope ? { scope } : {}) };
    return;
  }
  stats.grants.id_jag_redeem = (stats.grants.id_jag_redeem || 0) + 1;
  stats.subjects.push(p.assertion);
  let jag;
  try {
    ({ payload: jag } = await jose.jwtVerify(p.assertion, own, { issuer, audience: issuer, typ: 'oauth-id-jag+jwt' }));
  } catch (e) {
    throw new errors.InvalidGrant(`ID-JAG rejected: ${e.message}`);
  }
  if (jag.client_id !== client) throw new errors.InvalidGrant('the ID-JAG was issued to another client');
  const token = await sign({ sub: jag.sub, aud: jag.resource, client_id: client, scope: jag.scope, act: { sub: client } }, 'at+jwt');
  ctx.body = { access_token: token, token_type: 'Bearer', expires_in: ttl, ...(jag.scope ? { scope: jag.scope } : {}) };
}, ['assertion', 'scope', 'requested_token_use']);

provider.use(async (ctx, next) => {
  if (ctx.path === '/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST') stats.token_requests += 1;
  await next();
});

server.on('request', provider.callback());
console.log(`sts listening on ${issuer}`);
