// The operator console at /admin drives the hub through the operator API.

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

/** The row of a client in the console's table. */
const row = (admin, name) => admin.locator(`#clients-body tr[data-name="${name}"]`);

test('the operator sees clients and events, broadcasts, messages one client and a room, and disconnects', async () => {
  // Without an admin token the API answers loopback: no sign-in needed.
  const admin = await openPage(browser, `${server.http}/admin`);
  await admin.locator('#stream-status[data-state="live"]').waitFor();
  assert.equal(await admin.locator('#login-view').isVisible(), false);

  const ann = await openPage(browser, server.http);
  const ben = await openPage(browser, server.http);
  await signIn(ann, 'ann');
  await signIn(ben, 'ben');

  // Live clients table and event log.
  await row(admin, 'ann').waitFor();
  await row(admin, 'ben').waitFor();
  await admin.locator('#fig-connections', { hasText: '2' }).waitFor();
  await admin.locator('#events li[data-type="join"]', { hasText: 'ann connected from 127.0.0.1' }).waitFor();
  await admin.locator('#events li[data-type="join"]', { hasText: 'ben connected' }).waitFor();
  assert.match(await row(admin, 'ann').textContent(), /v1/);

  await joinRoom(ann, 'ops');
  await joinRoom(ben, 'ops');
  await admin.locator('#events li[data-type="room_join"]', { hasText: 'ben joined #ops' }).waitFor();
  await row(admin, 'ben').locator('td', { hasText: '#ops' }).waitFor();

  // A message to the server shows in the log, and messages_in counts it.
  await openConversation(ann, 'server');
  await sendMessage(ann, 'operator, are you there?');
  await admin.locator('#events li[data-type="message"]', { hasText: 'ann → server: operator, are you there?' }).waitFor();

  // Send to all: both pages show it in their server conversation.
  await admin.getByLabel('Send to all clients').fill('maintenance at 22:00');
  await admin.getByRole('button', { name: 'Send to all' }).click();
  await admin.locator('#notices .notice-ok', { hasText: 'delivered to 2 clients' }).waitFor();
  await expectMessage(ann, 'maintenance at 22:00', { from: 'operator' });
  await ben.locator('#sidebar button[data-conv="server"] .badge', { hasText: '1' }).waitFor();
  await openConversation(ben, 'server');
  const note = await expectMessage(ben, 'maintenance at 22:00', { from: 'operator' });
  assert.match(await note.textContent(), /to everyone/);

  // Send to the selected client only.
  await row(admin, 'ben').getByRole('radio').check();
  await admin.locator('#selected-name', { hasText: 'ben' }).waitFor();
  await admin.getByLabel(/Send to the selected client/).fill('just for you, ben');
  await admin.getByRole('button', { name: 'Send to client' }).click();
  await admin.locator('#notices .notice-ok', { hasText: 'Sent to ben.' }).waitFor();
  const privateNote = await expectMessage(ben, 'just for you, ben', { from: 'operator' });
  assert.match(await privateNote.textContent(), /to you/);

  // Send to a room.
  await admin.getByLabel('Send to a room').fill('ops');
  await admin.getByLabel('Room message').fill('room notice from the operator');
  await admin.getByRole('button', { name: 'Send to room' }).click();
  await admin.locator('#notices .notice-ok', { hasText: 'Sent to #ops: delivered to 2 members.' }).waitFor();
  await openConversation(ben, 'room:ops');
  await expectMessage(ben, 'room notice from the operator', { from: 'operator' });

  // Headline figures.
  await admin.locator('#fig-connections', { hasText: /^2$/ }).waitFor();
  await admin.locator('#fig-rooms', { hasText: /^1$/ }).waitFor();
  assert.match(await admin.locator('#fig-rate').textContent(), /^\d+(\.\d)?$/);
  await row(admin, 'ann').locator('td.num').first().filter({ hasText: /^[1-9]\d*$/ }).waitFor();
  await screenshot(admin, 'admin-console');
  await screenshot(ben, 'admin-broadcast-ben');

  // Disconnect ben with a reason: his page says so, with the close code.
  await row(admin, 'ben').getByRole('radio').check();
  await admin.getByLabel('Disconnect the selected client').fill('spamming the room');
  await admin.getByRole('button', { name: 'Disconnect', exact: true }).click();
  await ben.locator('#notices .notice-error', { hasText: 'Disconnected by the operator (code 4000: disconnected by operator: spamming the room)' }).waitFor();
  await ben.locator('#status[data-state="disconnected"]').waitFor();
  await admin.locator('#events li[data-type="leave"]', { hasText: 'ben disconnected — code 4000: disconnected by operator: spamming the room' }).waitFor();
  await row(admin, 'ben').waitFor({ state: 'detached' });
  await admin.locator('#fig-connections', { hasText: '1' }).waitFor();
  await screenshot(ben, 'admin-kicked-ben');
  await screenshot(admin, 'admin-after-disconnect');

  // The kicked page can reconnect by hand.
  await ben.getByRole('button', { name: 'Reconnect' }).click();
  await ben.locator('#status[data-state="connected"]').waitFor();
  await row(admin, 'ben').waitFor();

  for (const page of [admin, ann, ben]) {
    assert.deepEqual(page.problems, []);
    assert.deepEqual(page.dialogs, []);
  }
});
