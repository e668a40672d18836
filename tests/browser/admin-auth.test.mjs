// With --admin-token the console asks for the token and keeps it in the session.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openPage, screenshot, signIn } from './helpers.mjs';

const TOKEN = 'correct horse battery staple';
let server;
let browser;

before(async () => {
  server = await startServer({ adminToken: TOKEN });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the admin token login flow', async () => {
  // The API itself refuses requests without the token.
  assert.equal((await fetch(`${server.http}/api/clients`)).status, 401);

  const chat = await openPage(browser, server.http);
  await signIn(chat, 'zoe');

  const admin = await openPage(browser, `${server.http}/admin`);
  await admin.getByLabel('Admin token').waitFor();
  assert.equal(await admin.locator('#console-view').isVisible(), false);
  await screenshot(admin, 'admin-login');

  // A wrong token is refused with a readable message.
  await admin.getByLabel('Admin token').fill('wrong token');
  await admin.getByRole('button', { name: 'Sign in' }).click();
  await admin.locator('#login-error', { hasText: 'That admin token was not accepted' }).waitFor();
  await screenshot(admin, 'admin-login-refused');

  // The right one opens the console; the token is in sessionStorage, not the URL.
  await admin.getByLabel('Admin token').fill(TOKEN);
  await admin.getByLabel('Admin token').press('Enter');
  await admin.locator('#clients-body tr[data-name="zoe"]').waitFor();
  await admin.locator('#stream-status[data-state="live"]').waitFor();
  assert.equal(await admin.evaluate(() => sessionStorage.getItem('switchboard.adminToken')), TOKEN);
  assert.ok(!admin.url().includes('horse'), 'the token is not in the URL');

  // The event stream carries the header too: a new client shows up live.
  const late = await openPage(browser, server.http);
  await signIn(late, 'yann');
  await admin.locator('#events li[data-type="join"]', { hasText: 'yann connected' }).waitFor();

  // A reload in the same tab stays signed in.
  await admin.reload();
  await admin.locator('#clients-body tr[data-name="yann"]').waitFor();
  assert.equal(await admin.locator('#login-view').isVisible(), false);

  // Broadcasting works with the token.
  await admin.getByLabel('Send to all clients').fill('authorised announcement');
  await admin.getByRole('button', { name: 'Send to all' }).click();
  await chat.locator('#log li.msg', { hasText: 'authorised announcement' }).waitFor();
  await screenshot(admin, 'admin-signed-in');

  // Signing out forgets the token.
  await admin.getByRole('button', { name: 'Sign out' }).click();
  await admin.getByLabel('Admin token').waitFor();
  assert.equal(await admin.evaluate(() => sessionStorage.getItem('switchboard.adminToken')), null);

  // A fresh tab (new session) has to sign in again.
  const fresh = await openPage(browser, `${server.http}/admin`);
  await fresh.getByLabel('Admin token').waitFor();

  for (const page of [chat, admin, late, fresh]) {
    assert.deepEqual(page.problems, []);
  }
});
