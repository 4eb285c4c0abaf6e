-- The plain PostgreSQL ledger `ledgerctl bench --baseline` measures the node against, on the same
-- PostgreSQL instance (a database of its own, `ledger_baseline`). It is what a team without our
-- design would write: one transaction per transfer that locks both accounts, checks the balance,
-- updates both and inserts the transfer and its two entries. Two ways to drive it:
--   plain:   the client sends each statement (ledgerctl/src/baseline.rs, `PLAIN_*` statements);
--   plpgsql: one call of `baseline_transfer` below, a single round trip per transfer.
-- Both keep the same invariants as the node: money is conserved, an account that may not go
-- negative never does, an idempotency key applies at most once. `ledgerctl/tests/baseline.rs`
-- checks them under concurrency, so the comparison is with a ledger that is correct.

CREATE TABLE IF NOT EXISTS baseline_account (
    id             text    PRIMARY KEY,
    currency       text    NOT NULL,
    balance        bigint  NOT NULL DEFAULT 0,
    allow_negative boolean NOT NULL DEFAULT false,
    CHECK (allow_negative OR balance >= 0)
);

CREATE TABLE IF NOT EXISTS baseline_transfer (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    debit_account   text        NOT NULL REFERENCES baseline_account (id),
    credit_account  text        NOT NULL REFERENCES baseline_account (id),
    amount          bigint      NOT NULL CHECK (amount > 0),
    currency        text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS baseline_entry (
    transfer_id   bigint NOT NULL REFERENCES baseline_transfer (id),
    account_id    text   NOT NULL REFERENCES baseline_account (id),
    amount        bigint NOT NULL,
    balance_after bigint NOT NULL,
    PRIMARY KEY (transfer_id, account_id)
);

-- Outcome: 'applied', 'replayed', 'insufficient_funds', 'unknown_account', 'currency_mismatch',
-- 'same_account', 'invalid_amount', 'overflow'. Refusals change nothing.
CREATE OR REPLACE FUNCTION baseline_transfer(p_key text, p_from text, p_to text, p_amount bigint, p_currency text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    -- Row types rather than `record`: they start as all-NULL rows, so a missing account reads as NULL.
    a       baseline_account;
    v_from  baseline_account;
    v_to    baseline_account;
    v_id    bigint;
    v_debit bigint;
    v_credit bigint;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RETURN 'invalid_amount';
    END IF;
    IF p_from = p_to THEN
        RETURN 'same_account';
    END IF;
    IF EXISTS (SELECT 1 FROM baseline_transfer WHERE idempotency_key = p_key) THEN
        RETURN 'replayed';
    END IF;
    -- Both rows locked in id order, so two transfers between the same pair cannot deadlock.
    FOR a IN SELECT * FROM baseline_account WHERE id IN (p_from, p_to) ORDER BY id FOR UPDATE LOOP
        IF a.id = p_from THEN v_from := a; ELSE v_to := a; END IF;
    END LOOP;
    IF v_from.id IS NULL OR v_to.id IS NULL THEN
        RETURN 'unknown_account';
    END IF;
    IF v_from.currency <> p_currency OR v_to.currency <> p_currency THEN
        RETURN 'currency_mismatch';
    END IF;
    -- Checked arithmetic: bigint overflow is refused, never raised mid-transaction.
    IF v_from.balance < -9223372036854775807 + p_amount THEN
        RETURN 'overflow';
    END IF;
    v_debit := v_from.balance - p_amount;
    IF v_debit < 0 AND NOT v_from.allow_negative THEN
        RETURN 'insufficient_funds';
    END IF;
    IF v_to.balance > 9223372036854775807 - p_amount THEN
        RETURN 'overflow';
    END IF;
    v_credit := v_to.balance + p_amount;
    INSERT INTO baseline_transfer (idempotency_key, debit_account, credit_account, amount, currency)
    VALUES (p_key, p_from, p_to, p_amount, p_currency)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        -- The same key committed by a concurrent call after our check.
        RETURN 'replayed';
    END IF;
    UPDATE baseline_account SET balance = v_debit WHERE id = p_from;
    UPDATE baseline_account SET balance = v_credit WHERE id = p_to;
    INSERT INTO baseline_entry (transfer_id, account_id, amount, balance_after)
    VALUES (v_id, p_from, -p_amount, v_debit), (v_id, p_to, p_amount, v_credit);
    RETURN 'applied';
END;
$$;
