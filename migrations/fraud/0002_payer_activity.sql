-- The payer's recent payments as counters per five minutes, written with each assessment, so
-- that an assessment reads at most a day's buckets (288) of its payer instead of every payment
-- the payer made that day: a payer making thousands of payments a day is assessed as fast as
-- one making a few. The features "in the last hour" and "in the last day" are then counted to
-- five minutes (the bucket a window starts in is counted whole). Each five minutes of a payer
-- is split over eight rows (by the payment's id), so that a payer's concurrent payments do not
-- all wait on one row's lock.
--
-- The payments' later outcomes are no longer copied from events into the assessments: a
-- backtest asks the payment service for them when it runs, so that no event of every payment
-- is delivered to the fraud service only for backtests.

CREATE TABLE fraud_payer_activity (
    user_id UUID NOT NULL,
    -- The start of the five minutes.
    bucket TIMESTAMP NOT NULL,
    shard SMALLINT NOT NULL CHECK (shard >= 0 AND shard < 8),
    payments INTEGER NOT NULL CHECK (payments > 0),
    amount DECIMAL(24, 4) NOT NULL,
    round_payments INTEGER NOT NULL CHECK (round_payments >= 0),
    PRIMARY KEY (user_id, bucket, shard)
);

INSERT INTO fraud_payer_activity (user_id, bucket, shard, payments, amount, round_payments)
SELECT user_id, to_timestamp(floor(extract(epoch FROM assessed_at) / 300) * 300) AT TIME ZONE 'UTC', 0,
       count(*), sum(amount), count(*) FILTER (WHERE amount % 100 = 0)
  FROM fraud_assessments
 WHERE user_id IS NOT NULL AND assessed_at > LOCALTIMESTAMP - interval '2 days'
 GROUP BY 1, 2;

ALTER TABLE fraud_assessments DROP COLUMN outcome, DROP COLUMN outcome_at;

-- The velocity features no longer scan the assessments by payer and time.
DROP INDEX idx_fraud_assessments_user;
