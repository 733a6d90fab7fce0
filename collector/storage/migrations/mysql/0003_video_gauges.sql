-- bwmon schema version 3 (mysql): frame rates, resolutions, the bandwidth estimate and the
-- peer's relay in the minute rows, their averages and relayed minutes in the hour rows. NULL
-- where no sample of the minute carried the value (and in every row written before).

ALTER TABLE rtc_minute
    ADD COLUMN IF NOT EXISTS fps_in_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS fps_out_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS width_in INT NULL,
    ADD COLUMN IF NOT EXISTS height_in INT NULL,
    ADD COLUMN IF NOT EXISTS width_out INT NULL,
    ADD COLUMN IF NOT EXISTS height_out INT NULL,
    ADD COLUMN IF NOT EXISTS bwe_bps_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS remote_relayed BOOLEAN NULL;

ALTER TABLE rtc_hour
    ADD COLUMN IF NOT EXISTS fps_in_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS fps_out_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS bwe_bps_avg DOUBLE NULL,
    ADD COLUMN IF NOT EXISTS remote_relayed_minutes BIGINT NULL;
