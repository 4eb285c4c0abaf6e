// The finance workflow in a real browser (Debian's headless Chromium driven by playwright-core):
// the resolver logs in, filters the queue, opens the case and proposes a reversal; the approver
// logs in and approves; the page shows the case resolved. Parts are done with the keyboard alone.
// Run by reconcile/tests/browser.rs, which sets the environment and checks the ledger afterwards.
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('RECONCILE_URL');
const caseId = env('CASE_ID');
const account = env('ACCOUNT');
const shots = env('SCREENSHOT_DIR');
const users = JSON.parse(env('USERS')); // {resolver: password, approver: password}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function logIn(page, username, password) {
  await page.goto(`${base}/cases`);
  check(page.url().endsWith('/login'), `logged out, /cases sends to the login page (at ${page.url()})`);
  // Keyboard only: the username field has the focus (autofocus); Tab to the password; Enter
  // submits. Chromium applies autofocus in a rendering step after `load`, so wait for it rather
  // than type into nothing (CI once lost the approver's username that way).
  await page.waitForFunction(() => document.activeElement && document.activeElement.name === 'username',
                             null, { timeout: 10000 });
  await page.keyboard.type(username);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  try {
    await page.waitForURL(`${base}/cases`);
  } catch (e) {
    const shown = await page.locator('#error').textContent({ timeout: 1000 }).catch(() => '(no error shown)');
    throw new Error(`${username} did not get past the login page (it says: ${shown}): ${e.message}`);
  }
}

try {
  // A context per person: separate cookie jars, as two people at two desks.
  const resolverContext = await browser.newContext();
  const resolver = await resolverContext.newPage();
  await logIn(resolver, 'resolver', users.resolver);

  // A wrong form is shown again with its error and changes nothing.
  await resolver.goto(`${base}/cases/${caseId}`);
  await resolver.selectOption('select[name=action]', 'adjust');
  await resolver.fill('input[name=from]', account);
  await resolver.fill('input[name=to]', 'shop');
  await resolver.fill('input[name=amount]', 'ten');
  await resolver.fill('input[name=currency]', 'USD');
  await resolver.fill('textarea[name=reason]', 'typo in the amount');
  await resolver.click('button:has-text("Propose")');
  check((await resolver.textContent('#error')).includes('amount must be a whole number'), 'the form shows the error');
  check((await resolver.textContent('#case-state')).trim() === 'open', 'nothing changed');

  // The queue, filtered to overdrafts on the account.
  await resolver.goto(`${base}/cases`);
  await resolver.selectOption('select[name=kind]', 'overdraft');
  await resolver.fill('input[name=account]', account);
  await resolver.click('button:has-text("Apply filters")');
  const rows = await resolver.locator('#cases tbody tr').count();
  check(rows === 1, `one overdraft case on ${account}, got ${rows}`);
  await resolver.click(`#cases a[href="/cases/${caseId}"]`);
  await resolver.waitForURL(`${base}/cases/${caseId}`);
  check((await resolver.locator('#branches th code').count()) === 3, 'three branches side by side');
  check((await resolver.locator('#timeline li').count()) >= 6, 'the timeline lists each region\'s transfer and detection');
  check((await resolver.textContent('#balance-before')).trim() === '150', 'the balance before the three debits');
  check((await resolver.textContent('#balance-after')).trim() === '-30', 'the balance after all three');
  await resolver.screenshot({ path: `${shots}/case-open.png`, fullPage: true });

  // Propose reversing one of the debits.
  await resolver.selectOption('select[name=action]', 'reverse');
  const transfer = await resolver.locator('select[name=event_id] option').nth(1).getAttribute('value');
  await resolver.selectOption('select[name=event_id]', transfer);
  await resolver.fill('textarea[name=reason]', 'the last debit overdrew the account');
  await resolver.click('button:has-text("Propose")');
  await resolver.waitForURL(`${base}/cases/${caseId}`);
  check((await resolver.textContent('#case-state')).trim() === 'proposed', 'the case is proposed');
  check((await resolver.locator('button:has-text("Approve")').count()) === 0, 'a resolver is not offered approval');
  await resolverContext.close();

  const approverContext = await browser.newContext();
  const approver = await approverContext.newPage();
  await logIn(approver, 'approver', users.approver);
  await approver.goto(`${base}/cases/${caseId}`);
  // Keyboard only: focus the Approve button and press Enter.
  await approver.focus('button:has-text("Approve")');
  await approver.keyboard.press('Enter');
  await approver.waitForURL(`${base}/cases/${caseId}`);
  let state = '';
  for (let i = 0; i < 240; i++) {
    state = (await approver.textContent('#case-state')).trim();
    if (state === 'resolved') break;
    await approver.waitForTimeout(500);
    await approver.reload();
  }
  check(state === 'resolved', `the case is resolved (last seen ${state})`);
  check((await approver.textContent('body')).includes('Compensating transfer'), 'the page names the compensating transfer');
  await approver.screenshot({ path: `${shots}/case-resolved.png`, fullPage: true });
  await approverContext.close();
  console.log('browser flow: resolved');
} finally {
  await browser.close();
}
