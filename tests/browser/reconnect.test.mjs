// A page survives a server restart: it says it is reconnecting, then reconnects,
// re-joins its rooms and can send again.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, screenshot, signIn, openConversation,
  sendMessage, expectMessage, joinRoom, WAIT_MS,
} from './helpers.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a page reconnects after the server restarts and rejoins its rooms', async () => {
  const page = await openPage(browser, server.http);
  await signIn(page, 'phoenix');
  await joinRoom(page, 'ashes');

  // Kill the server outright (no close frame), then start a new one on the same port.
  const port = server.port;
  await server.stop('SIGKILL');
  await page.locator('#status[data-state="reconnecting"]').waitFor();
  await page.locator('#status', { hasText: /Reconnecting/ }).waitFor();
  await page.locator('#notices .notice-warn', { hasText: 'Disconnected (code 1006). Reconnecting automatically' }).waitFor();
  await screenshot(page, 'reconnect-waiting');

  server = await startServer({ port, dataDir: server.dataDir });
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 3 * WAIT_MS });
  await page.locator('#status', { hasText: 'Reconnected as phoenix' }).waitFor();
  await page.locator('#notices .notice-ok', { hasText: 'Reconnected; rejoined 1 room.' }).waitFor();

  // The room was re-joined on the new server: a new page meets us there.
  const friend = await openPage(browser, server.http);
  await signIn(friend, 'friend');
  await joinRoom(friend, 'ashes');
  await page.locator('#conv-subtitle', { hasText: '2 members: friend, phoenix' }).waitFor();
  await sendMessage(friend, 'welcome back');
  await expectMessage(page, 'welcome back', { from: 'friend' });
  await sendMessage(page, 'I am back');
  await page.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'I am back' }).waitFor();
  await expectMessage(friend, 'I am back', { from: 'phoenix' });
  await openConversation(page, 'server');
  await screenshot(page, 'reconnect-done-server');
  await openConversation(page, 'room:ashes');
  await screenshot(page, 'reconnect-done');

  // A graceful shutdown (close code 1001) is reported with its reason.
  await server.stop('SIGTERM');
  await page.locator('#notices .notice-warn', { hasText: 'code 1001: server shutting down' }).waitFor();
  await page.locator('#status[data-state="reconnecting"]').waitFor();
  server = await startServer({ port, dataDir: server.dataDir });
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 3 * WAIT_MS });

  assert.deepEqual(page.problems, []);
  assert.deepEqual(friend.problems, []);
});
