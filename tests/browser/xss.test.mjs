// Message text is rendered as text: markup sent as a message never runs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, screenshot, signIn, openConversation,
  sendMessage, expectMessage, joinRoom,
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

const PAYLOAD = '<img src=x onerror=alert(1)>';
const ROOM_PAYLOAD = '<script>alert(2)</script><b onmouseover=alert(3)>bold?</b>';

test('markup in messages renders as text and nothing runs', async () => {
  const mallory = await openPage(browser, server.http);
  const victim = await openPage(browser, server.http);
  await signIn(mallory, 'mallory');
  await signIn(victim, 'victim');

  await openConversation(mallory, 'dm:victim');
  await sendMessage(mallory, PAYLOAD);
  await openConversation(victim, 'dm:mallory');
  const received = await expectMessage(victim, PAYLOAD, { from: 'mallory' });
  assert.equal(await received.locator('p.text').textContent(), PAYLOAD);
  assert.equal(await received.locator('img').count(), 0, 'no <img> element was created');

  await joinRoom(mallory, 'pwn');
  await joinRoom(victim, 'pwn');
  await sendMessage(mallory, ROOM_PAYLOAD);
  const roomMessage = await expectMessage(victim, 'alert(2)', { from: 'mallory' });
  assert.equal(await roomMessage.locator('p.text').textContent(), ROOM_PAYLOAD);
  assert.equal(await roomMessage.locator('script, b').count(), 0);

  // The operator's event log renders the same text safely.
  const admin = await openPage(browser, `${server.http}/admin`);
  await admin.locator('#stream-status[data-state="live"]').waitFor();
  await openConversation(mallory, 'server');
  await sendMessage(mallory, PAYLOAD);
  const event = admin.locator('#events li[data-type="message"]', { hasText: PAYLOAD });
  await event.waitFor();
  assert.equal(await admin.locator('#events img').count(), 0);

  // A name with markup is text too.
  const weird = await openPage(browser, server.http);
  await signIn(weird, '<i>name</i>');
  await victim.locator('#people-list button', { hasText: '<i>name</i>' }).waitFor();
  assert.equal(await victim.locator('#people-list i').count(), 0);

  // No element was created from message text anywhere on the pages.
  for (const page of [victim, mallory]) {
    assert.equal(await page.locator('#log img, #log script, #log b, #sidebar i').count(), 0);
  }
  await screenshot(victim, 'xss-victim-room');
  await openConversation(victim, 'dm:mallory');
  await screenshot(victim, 'xss-victim-dm');
  await screenshot(admin, 'xss-admin-events');
  for (const page of [mallory, victim, admin, weird]) {
    assert.deepEqual(page.dialogs, [], 'no alert() ran');
    assert.deepEqual(page.problems, []);
  }
});
