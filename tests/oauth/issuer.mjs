// The authorization server the OAuth tests talk to: oidc-provider (pinned in package.json) on loopback.
//
//   node tests/oauth/issuer.mjs <resource URL>
//
// Prints one JSON line once listening: {"issuer": "http://127.0.0.1:<port>"}. Clients (secret = id + "-secret"):
// alice and bob (JWT access tokens, both scopes), reader (qolaba:read only), opaque (opaque tokens, both scopes),
// introspector (may only introspect). POST /_rotate signs with a new key from then on, the old one still published;
// GET /_signing_key gives the private key that signs now, for the tests' forged tokens.
import http from 'node:http';
import { generateKeyPair, exportJWK } from 'jose';
import Provider, { errors } from 'oidc-provider';

const resource = process.argv[2];
const BOTH = 'qolaba:read qolaba:generate';
const client = (id, scope) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope,
});
const keys = [];

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: `key-${keys.length + 1}`, alg: 'RS256', use: 'sig' };
}

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: [client('alice', BOTH), client('bob', BOTH), client('reader', 'qolaba:read'), client('opaque', BOTH),
      client('introspector', 'qolaba:read')],
    jwks: { keys },
    scopes: ['qolaba:read', 'qolaba:generate'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator, c) => {
          if (indicator !== resource) throw new errors.InvalidTarget();
          return {
            scope: BOTH,
            audience: resource,
            accessTokenTTL: 600,
            accessTokenFormat: c.clientId === 'opaque' ? 'opaque' : 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  return provider.callback();
}

keys.push(await newKey());
let handle;
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_rotate') {
    newKey().then((key) => {
      keys.unshift(key); // the first key signs; the old one stays published for tokens already out
      handle = build(issuer);
      res.end(JSON.stringify({ kid: key.kid }));
    });
    return;
  }
  if (req.url === '/_signing_key') { // test-only: lets the tests sign tokens the issuer's keys verify
    res.end(JSON.stringify(keys[0]));
    return;
  }
  handle(req, res);
});
let issuer;
server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  handle = build(issuer);
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
