// Two Chromium pages chat privately and in a room through a real hub.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, screenshot, signIn, conv, openConversation,
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

test('the page is served with a CSP, embedded assets and correct types', async () => {
  const page = await fetch(`${server.http}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  const csp = page.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  const html = await page.text();
  assert.match(html, /<script type="module" src="\/assets\/app.js">/);
  const js = await fetch(`${server.http}/assets/app.js`);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  const css = await fetch(`${server.http}/assets/style.css`);
  assert.match(css.headers.get('content-type'), /^text\/css/);
  const admin = await fetch(`${server.http}/admin`);
  assert.equal(admin.status, 200);
  assert.match(await admin.text(), /\/assets\/admin.js/);
  assert.equal((await fetch(`${server.http}/assets/nope.js`)).status, 404);
});

test('two pages chat privately and in a room, with acks and unread counts', async () => {
  const alice = await openPage(browser, server.http);
  const bob = await openPage(browser, server.http);
  await signIn(alice, 'alice');
  await signIn(bob, 'bob');

  // Presence: each sees the other online, and their own name.
  await conv(alice, 'dm:bob').waitFor();
  await conv(bob, 'dm:alice').waitFor();
  assert.match(await alice.locator('#me').textContent(), /alice/);
  assert.match(await alice.locator('#people-list').textContent(), /alice \(you\)/);

  // Private conversation: alice → bob; bob sees an unread badge first.
  await openConversation(alice, 'dm:bob');
  await sendMessage(alice, 'hello bob, this is private');
  const sent = await expectMessage(alice, 'hello bob, this is private', { from: 'alice' });
  await alice.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'hello bob' }).waitFor();
  assert.equal(await sent.locator('.mark').textContent(), '✓');
  await conv(bob, 'dm:alice').locator('.badge', { hasText: '1' }).waitFor();
  assert.equal(await bob.title(), '(1) Switchboard chat');
  await openConversation(bob, 'dm:alice');
  const received = await expectMessage(bob, 'hello bob, this is private', { from: 'alice' });
  assert.match(await received.locator('time').textContent(), /^\d\d:\d\d:\d\d$/);
  assert.equal(await conv(bob, 'dm:alice').locator('.badge').count(), 0, 'opening clears the unread count');
  await sendMessage(bob, 'hi alice');
  await expectMessage(alice, 'hi alice', { from: 'bob' });

  // A room: both join, messages go to the other member.
  await joinRoom(alice, 'lobby');
  await joinRoom(bob, 'lobby');
  await alice.locator('#conv-subtitle', { hasText: '2 members: alice, bob' }).waitFor();
  await sendMessage(bob, 'hello lobby');
  await bob.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'hello lobby' }).waitFor();
  await expectMessage(alice, 'hello lobby', { from: 'bob' });

  // Unread counts are per conversation: a DM arrives while alice is in the room.
  await openConversation(bob, 'dm:alice');
  await sendMessage(bob, 'one');
  await sendMessage(bob, 'two');
  await conv(alice, 'dm:bob').locator('.badge', { hasText: '2' }).waitFor();
  assert.equal(await conv(alice, 'room:lobby').locator('.badge').count(), 0);

  // Messages to the operator are acknowledged too.
  await openConversation(alice, 'server');
  await sendMessage(alice, 'hello operator');
  await alice.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'hello operator' }).waitFor();

  await openConversation(alice, 'room:lobby');
  await screenshot(alice, 'chat-room-alice');
  await openConversation(bob, 'dm:alice');
  await screenshot(bob, 'chat-private-bob');

  // Recipient offline (issue 7): bob leaves; alice's next DM is stored by the
  // hub and says so, and bob gets it when he signs in again.
  await bob.close();
  await alice.locator('#people-list', { hasText: 'offline' }).waitFor();
  await openConversation(alice, 'dm:bob');
  await sendMessage(alice, 'are you there?');
  await alice.locator('#log li.msg[data-state="stored"]').filter({ hasText: 'are you there?' }).waitFor();
  await alice.locator('#log li.system', { hasText: 'bob is offline — stored, delivered when they reconnect' }).waitFor();
  await screenshot(alice, 'chat-recipient-offline');
  const bobAgain = await openPage(browser, server.http);
  await signIn(bobAgain, 'bob');
  await conv(bobAgain, 'dm:alice').locator('.badge', { hasText: '1' }).waitFor();
  await openConversation(bobAgain, 'dm:alice');
  await expectMessage(bobAgain, 'are you there?', { from: 'alice' });
  await screenshot(bobAgain, 'chat-stored-delivered');
  await bobAgain.close();

  // Name taken: a second page cannot use alice's name and says so.
  const impostor = await openPage(browser, server.http);
  await impostor.getByLabel('Your name').fill('alice');
  await impostor.getByRole('button', { name: 'Connect' }).click();
  await impostor.locator('#notices .notice-error', { hasText: 'Could not connect as “alice” (name taken or server down)' })
    .waitFor();
  assert.equal(await impostor.locator('#login-view').isVisible(), true);
  await screenshot(impostor, 'chat-name-taken');

  for (const page of [alice, impostor]) {
    assert.deepEqual(page.problems, []);
    assert.deepEqual(page.dialogs, []);
  }
  await alice.context().close();
  await impostor.context().close();
});

test('keyboard only, at phone width', async () => {
  const page = await openPage(browser, server.http, { viewport: { width: 390, height: 760 } });
  const other = await openPage(browser, server.http);
  await signIn(other, 'carol');

  // The name field has focus on load; Enter connects.
  await page.keyboard.type('dave');
  await page.keyboard.press('Enter');
  await page.locator('#status[data-state="connected"]').waitFor();
  // The composer has focus once connected: Enter sends to the server conversation.
  await page.keyboard.type('typed without a mouse');
  await page.keyboard.press('Enter');
  await page.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'typed without a mouse' }).waitFor();

  // Open the folded conversation list with the keyboard and pick carol.
  await page.locator('#toggle-sidebar').focus();
  await page.keyboard.press('Enter');
  await conv(page, 'dm:carol').waitFor({ state: 'visible' });
  await conv(page, 'dm:carol').focus();
  await page.keyboard.press('Enter');
  await page.locator('#conv-title', { hasText: 'carol' }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'composer-text');
  await page.keyboard.type('hi carol, from my phone');
  await page.keyboard.press('Enter');
  await openConversation(other, 'dm:dave');
  await expectMessage(other, 'hi carol, from my phone', { from: 'dave' });
  await sendMessage(other, 'a reply with a long word: Donaudampfschifffahrtsgesellschaftskapitänsmütze');
  await expectMessage(page, 'Donaudampfschifffahrtsgesellschaftskapitänsmütze', { from: 'carol' });

  // Nothing overflows the phone-width viewport horizontally.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page overflows by ${overflow}px`);
  await screenshot(page, 'chat-phone-width');
  await page.locator('#toggle-sidebar').click();
  await screenshot(page, 'chat-phone-width-sidebar');
  assert.deepEqual(page.problems, []);
  await page.context().close();
  await other.context().close();
});
