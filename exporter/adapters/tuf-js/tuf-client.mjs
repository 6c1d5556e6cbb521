#!/usr/bin/env node
// tuf-exporter's tuf-js client: the client-under-test CLI of the TUF conformance suite
// (theupdateframework/tuf-conformance, CLIENT-CLI.md) on top of the tuf-js Updater.
//
//   tuf-client.mjs --metadata-dir DIR init TRUSTED_ROOT
//   tuf-client.mjs --metadata-dir DIR --metadata-url URL refresh
//   tuf-client.mjs --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
//                  --target-base-url URL --target-dir DIR download
//
// Exit 0 when the command succeeded fully, 1 otherwise (bad usage included); the reason goes
// to stderr. Every verdict is tuf-js's: this file only maps the protocol onto its public API
// (Updater.refresh, getTargetInfo, findCachedTarget, downloadTarget) with its default
// configuration, so the view is what npm's CLI and sigstore-js see. METADATA_DIR holds the
// trusted metadata under unversioned names (root.json, timestamp.json, <role>.json), which is
// how tuf-js persists it. `-v` (or DEBUG=tuf:*) prints tuf-js's own debug log on stderr.
//
// Install the pinned tuf-js next to this file with `npm ci` (see package.json / lock file).

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { parseArgs } from 'node:util';

const USAGE = `usage:
  tuf-client.mjs --metadata-dir DIR init TRUSTED_ROOT
  tuf-client.mjs --metadata-dir DIR --metadata-url URL refresh
  tuf-client.mjs --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
                 --target-base-url URL --target-dir DIR download`;

// Sent as "<this> tuf-js/<version>" so repository operators can tell these requests apart.
const USER_AGENT = 'tuf-exporter-tuf-js-client';

class UsageError extends Error {}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        'metadata-dir': { type: 'string' },
        'metadata-url': { type: 'string' },
        'target-name': { type: 'string', multiple: true },
        'target-base-url': { type: 'string' },
        'target-dir': { type: 'string' },
        verbose: { type: 'boolean', short: 'v', multiple: true },
      },
    });
  } catch (error) {
    throw new UsageError(error.message);
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  const need = (...names) => {
    for (const name of names) {
      if (!values[name]) throw new UsageError(`${command} needs --${name}`);
    }
  };
  const expect = (count) => {
    if (rest.length !== count) {
      throw new UsageError(`${command} takes ${count} argument(s), got ${rest.length}`);
    }
  };
  switch (command) {
    case 'init':
      need('metadata-dir');
      expect(1);
      break;
    case 'refresh':
      need('metadata-dir', 'metadata-url');
      expect(0);
      break;
    case 'download':
      need('metadata-dir', 'metadata-url', 'target-name', 'target-base-url', 'target-dir');
      expect(0);
      break;
    default:
      throw new UsageError(command ? `unknown command ${command}` : 'no command given');
  }
  return { command, args: rest, values };
}

// Init: trust the given root as is (the protocol asks for no checks and no requests; the
// Updater verifies it when it loads it on the next refresh).
function init(metadataDir, trustedRoot) {
  fs.mkdirSync(metadataDir, { recursive: true });
  fs.copyFileSync(trustedRoot, path.join(metadataDir, 'root.json'));
}

function updater(Updater, values, withTargets) {
  const options = {
    metadataDir: values['metadata-dir'],
    metadataBaseUrl: values['metadata-url'],
    config: { userAgent: USER_AGENT },
  };
  if (withTargets) {
    fs.mkdirSync(values['target-dir'], { recursive: true });
    options.targetDir = values['target-dir'];
    options.targetBaseUrl = values['target-base-url'];
  }
  return new Updater(options);
}

// Download: one Updater for all targets, in argument order; stop at the first failure.
// The metadata is refreshed first (the protocol wants it up to date before any download);
// a target already in TARGET_DIR with matching length and hashes is not fetched again.
async function download(Updater, values) {
  const client = updater(Updater, values, true);
  await client.refresh();
  for (const name of values['target-name']) {
    const info = await client.getTargetInfo(name);
    if (!info) throw new Error(`target ${JSON.stringify(name)} not found in the repository`);
    if (!(await client.findCachedTarget(info))) {
      await client.downloadTarget(info);
    }
  }
}

// The message of an error and of its causes (tuf-js wraps errors with `cause`).
function describe(error) {
  const parts = [];
  for (let e = error, depth = 0; e && depth < 5; e = e.cause, depth += 1) {
    parts.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  }
  return parts.join('\n  caused by ');
}

async function main(argv) {
  let request;
  try {
    request = parse(argv);
  } catch (error) {
    process.stderr.write(`tuf-js client: ${error.message}\n${USAGE}\n`);
    return 1;
  }
  const { command, args, values } = request;
  if (values.verbose) {
    // tuf-js logs through `debug`, which reads DEBUG when it is first loaded (below).
    process.env.DEBUG = process.env.DEBUG ? `${process.env.DEBUG},tuf:*` : 'tuf:*';
  }
  try {
    if (command === 'init') {
      init(values['metadata-dir'], args[0]);
    } else {
      const { Updater } = await import('tuf-js');
      if (command === 'refresh') {
        await updater(Updater, values, false).refresh();
      } else {
        await download(Updater, values);
      }
    }
  } catch (error) {
    process.stderr.write(`tuf-js client: ${command} failed: ${describe(error)}\n`);
    return 1;
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
