#!/usr/bin/env node
// Opens a self-contained HTML file in a real headless browser (Debian's chromium at
// /usr/bin/chromium, driven by playwright-core, which downloads no browser of its own)
// and reports what a person opening it would run into:
//
//   node infra/browser-check.mjs --html FILE --screenshot OUT.png \
//        [--expect TEXT]... [--expect-selector CSS]...
//
// Prints one JSON object on stdout:
//   ok                 every list below is empty
//   console_errors     console messages of type error or warning: {type, text, location}
//   page_errors        uncaught exceptions (pageerror), and a failed navigation
//   failed_requests    file:/data: requests that failed (a missing local file): {url, error}
//   external_requests  every request for anything but file: or data: (a report must be
//                      self-contained); they are blocked before they leave the browser
//   missing_texts      --expect texts not in document.body.innerText
//   missing_selectors  --expect-selector selectors that match no element
//   screenshot         the full-page PNG written (null when navigation failed)
//   title, svg_count   document.title and the number of <svg> elements
// Exit status: 0 when ok, 1 when a check failed, 2 on a usage or launch error (stderr says).
// Needs infra/node_modules (scripts/ensure-infra-tools.sh installs it, and chromium).
import { rmSync } from 'node:fs';
import { mkdtemp, mkdir, rm, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const CHROMIUM = process.env.DRPILOT_CHROMIUM || '/usr/bin/chromium';
const LAUNCH_MS = 60_000;
const NAVIGATION_MS = 30_000;
const STEP_MS = 30_000; // screenshot and each evaluation
const SETTLE_MS = 3_000; // after load, wait this long at most for the network to go quiet
const OVERALL_MS = 150_000; // everything, launch to exit
// No network here: without these Chromium keeps trying (and logging) connections of its own.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const USAGE =
  'usage: node infra/browser-check.mjs --html FILE --screenshot OUT.png ' +
  '[--expect TEXT]... [--expect-selector CSS]...';

function fail(message) {
  process.stderr.write(`browser-check: ${message}\n`);
  process.exit(2);
}

// A usage or launch error found once the browser may be running: main cleans up, then exits 2.
class UsageError extends Error {}

function parseArgs(argv) {
  const opts = { html: null, screenshot: null, expect: [], expectSelector: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    if (!['--html', '--screenshot', '--expect', '--expect-selector'].includes(flag)) {
      fail(`unknown argument ${JSON.stringify(flag)}\n${USAGE}`);
    }
    if (i + 1 >= argv.length) fail(`${flag} needs a value\n${USAGE}`);
    const value = argv[++i];
    if (flag === '--html') opts.html = value;
    else if (flag === '--screenshot') opts.screenshot = value;
    else if (flag === '--expect') opts.expect.push(value);
    else opts.expectSelector.push(value);
  }
  if (!opts.html || !opts.screenshot) fail(`--html and --screenshot are required\n${USAGE}`);
  return opts;
}

// Playwright's messages carry terminal colour codes.
function plain(message) {
  return String(message).replace(/\u001b\[[0-9;]*m/g, '').trim();
}

function isLocal(url) {
  return url.startsWith('file:') || url.startsWith('data:');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const html = resolve(opts.html);
  const screenshot = resolve(opts.screenshot);
  try {
    await access(html);
  } catch {
    fail(`no such file: ${html}`);
  }
  try {
    await access(CHROMIUM);
  } catch {
    fail(`no browser at ${CHROMIUM} (scripts/ensure-browser.sh installs Debian's chromium)`);
  }
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    fail(`cannot load playwright-core (run scripts/ensure-infra-tools.sh): ${e.message}`);
  }

  const userDataDir = await mkdtemp(join(tmpdir(), 'drpilot-browser-check-'));
  const watchdog = setTimeout(() => {
    rmSync(userDataDir, { recursive: true, force: true });
    fail(`gave up after ${OVERALL_MS / 1000} s`);
  }, OVERALL_MS);
  watchdog.unref();

  let context;
  let result;
  let error;
  try {
    try {
      // A persistent context is the only way to hand Chromium a user-data-dir of our own.
      context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: ARGS,
        timeout: LAUNCH_MS,
        viewport: { width: 1280, height: 800 },
      });
    } catch (e) {
      throw new UsageError(`cannot launch ${CHROMIUM}: ${plain(e.message)}`);
    }
    result = await check(context, html, screenshot, opts);
  } catch (e) {
    error = e;
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    clearTimeout(watchdog);
  }
  if (error) fail(error instanceof UsageError ? error.message : error.stack || String(error));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = result.ok ? 0 : 1;
}

async function check(context, html, screenshot, opts) {
  const result = {
    ok: false,
    console_errors: [],
    page_errors: [],
    failed_requests: [],
    external_requests: [],
    missing_texts: [],
    missing_selectors: [],
    screenshot: null,
    title: null,
    svg_count: 0,
  };
  // Nothing but file: and data: leaves the browser; the rest is recorded and refused.
  await context.route('**/*', (route) =>
    isLocal(route.request().url()) ? route.continue() : route.abort('blockedbyclient'),
  );
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_MS);
  page.setDefaultNavigationTimeout(NAVIGATION_MS);
  page.on('console', (msg) => {
    const type = msg.type();
    if (type !== 'error' && type !== 'warning') return;
    const loc = msg.location();
    const location = loc && loc.url ? `${loc.url}:${loc.lineNumber}:${loc.columnNumber}` : null;
    result.console_errors.push({ type, text: msg.text(), location });
  });
  page.on('pageerror', (err) => {
    result.page_errors.push(err.stack || `${err.name}: ${err.message}`);
  });
  page.on('request', (req) => {
    if (!isLocal(req.url())) result.external_requests.push(req.url());
  });
  page.on('websocket', (ws) => result.external_requests.push(ws.url()));
  page.on('requestfailed', (req) => {
    if (!isLocal(req.url())) return; // already in external_requests
    result.failed_requests.push({ url: req.url(), error: req.failure()?.errorText ?? null });
  });

  try {
    await page.goto(pathToFileURL(html).href, { waitUntil: 'load' });
  } catch (e) {
    result.page_errors.push(`navigation failed: ${plain(e.message)}`);
    return result;
  }
  // Let scripts that fetch after load show themselves; a quiet page passes at once.
  await page.waitForLoadState('networkidle', { timeout: SETTLE_MS }).catch(() => {});

  await mkdir(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  result.screenshot = screenshot;

  const facts = await page.evaluate(
    ({ texts, selectors }) => {
      const body = document.body ? document.body.innerText : '';
      const counts = selectors.map((s) => {
        try {
          return document.querySelectorAll(s).length;
        } catch {
          return -1;
        }
      });
      return {
        title: document.title,
        svgCount: document.querySelectorAll('svg').length,
        missingTexts: texts.filter((t) => !body.includes(t)),
        counts,
      };
    },
    { texts: opts.expect, selectors: opts.expectSelector },
  );
  const invalid = opts.expectSelector.filter((_, i) => facts.counts[i] < 0);
  if (invalid.length) {
    throw new UsageError(`not a valid CSS selector: ${invalid.map((s) => JSON.stringify(s)).join(', ')}`);
  }
  result.title = facts.title;
  result.svg_count = facts.svgCount;
  result.missing_texts = facts.missingTexts;
  result.missing_selectors = opts.expectSelector.filter((_, i) => facts.counts[i] === 0);
  result.ok = [
    result.console_errors,
    result.page_errors,
    result.failed_requests,
    result.external_requests,
    result.missing_texts,
    result.missing_selectors,
  ].every((list) => list.length === 0);
  return result;
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
