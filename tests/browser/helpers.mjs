// Shared helpers for the browser end-to-end tests: a real switchboard server
// process, a real headless Chromium (the system's /usr/bin/chromium driven by
// playwright-core), and bounded waits. Nothing is mocked.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BINARY = path.join(ROOT, 'target/debug/switchboard');
export const ARTIFACTS = path.join(ROOT, 'tests-artifacts');

/** How long any single wait may take before the test fails. */
export const WAIT_MS = 10_000;

const CHROMIUM = process.env.CHROMIUM_PATH
  ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p))
  ?? '/usr/bin/chromium';

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Polls `check` until it returns a truthy value or `timeout` passes. */
export async function waitFor(check, { timeout = WAIT_MS, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(interval);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
}

/**
 * Starts `switchboard serve` on 127.0.0.1:`port` (a free one by default) and
 * waits for /healthz. Returns { port, http, ws, proc, log(), stop() }.
 */
export async function startServer({ port, adminToken, args = [], dataDir } = {}) {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build --workspace first`);
  port ??= await freePort();
  const argv = ['serve', '--listen', `127.0.0.1:${port}`, ...args];
  // A message store of its own (issue 7), unless the test chose one or none.
  if (!args.includes('--data-dir') && !args.includes('--ephemeral')) {
    dataDir ??= mkdtempSync(path.join(tmpdir(), 'switchboard-browser-'));
    argv.push('--data-dir', dataDir);
  }
  if (adminToken) argv.push('--admin-token', adminToken);
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' };
  delete env.SWITCHBOARD_ADMIN_TOKEN;
  const proc = spawn(BINARY, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const exited = once(proc, 'exit');
  const http = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}:\n${output}`);
      const response = await fetch(`${http}/healthz`);
      return response.ok;
    }, { what: `switchboard on port ${port} to answer /healthz` });
  } catch (error) {
    proc.kill('SIGKILL');
    throw new Error(`${error.message}\n--- server output ---\n${output}`);
  }
  return {
    port,
    http,
    ws: `ws://127.0.0.1:${port}`,
    proc,
    dataDir,
    log: () => output,
    /** SIGTERM (graceful) or SIGKILL, then wait for the exit, bounded. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), WAIT_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Launches the system Chromium headless, with the flags that work in this sandbox. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

/**
 * Opens a page in a fresh context and records what must never happen:
 * uncaught exceptions, dialogs (alert/confirm), CSP violations. Returns the
 * page with a `problems` array.
 */
export async function openPage(browser, url, { viewport = { width: 1200, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  page.problems = [];
  page.dialogs = [];
  page.on('pageerror', (error) => page.problems.push(`uncaught: ${error.message}`));
  page.on('dialog', (dialog) => {
    page.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on('console', (message) => {
    const text = message.text();
    if (message.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) {
      page.problems.push(`csp: ${text}`);
    }
  });
  await page.goto(url);
  return page;
}

/** Saves a full-page screenshot as tests-artifacts/NAME.png. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Fills the name form on the chat page and waits until connected. */
export async function signIn(page, name) {
  await page.getByLabel('Your name').fill(name);
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
  await page.locator('#chat-view').waitFor();
}

/** The sidebar button of a conversation: "server", "dm:NAME" or "room:NAME". */
export function conv(page, key) {
  return page.locator(`#sidebar button[data-conv="${key}"]`);
}

/** Opens a conversation by clicking it in the sidebar. */
export async function openConversation(page, key) {
  await conv(page, key).click();
  await page.locator(`#sidebar button[data-conv="${key}"][aria-current="true"]`).waitFor();
}

/** Types a message in the composer and presses Enter. */
export async function sendMessage(page, text) {
  const box = page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await box.press('Enter');
}

/** Waits for a message with this exact text in the open conversation; returns its locator. */
export async function expectMessage(page, text, { from } = {}) {
  let item = page.locator('#log li.msg').filter({ has: page.locator('p.text', { hasText: text }) });
  if (from) item = item.filter({ has: page.locator('.from', { hasText: from }) });
  await item.last().waitFor();
  return item.last();
}

/** Joins a room through the sidebar form and waits until it is listed. */
export async function joinRoom(page, room) {
  await page.getByLabel('Room to join').fill(room);
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await conv(page, `room:${room}`).waitFor();
}

/** A `switchboard connect` process: write lines, wait for printed lines. */
export function startCli(server, name) {
  const proc = spawn(BINARY, ['connect', server.ws, '--name', name], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = once(proc, 'exit');
  return {
    proc,
    output: () => stdout,
    errors: () => stderr,
    send(line) {
      proc.stdin.write(`${line}\n`);
    },
    async waitForLine(pattern, what = String(pattern)) {
      return waitFor(() => {
        if (proc.exitCode !== null) {
          throw new Error(`switchboard connect exited with ${proc.exitCode}; stdout:\n${stdout}\nstderr:\n${stderr}`);
        }
        return stdout.split('\n').find((line) => (pattern instanceof RegExp ? pattern.test(line) : line.includes(pattern)));
      }, { what: `the CLI to print ${what}` });
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.stdin.end();
      const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}
