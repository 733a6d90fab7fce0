-- bwmon schema version 3 (sqlite): frame rates, resolutions, the bandwidth estimate and the
-- peer's relay in the minute rows, their averages and relayed minutes in the hour rows. NULL
-- where no sample of the minute carried the value (and in every row written before).

ALTER TABLE rtc_minute ADD COLUMN fps_in_avg REAL NULL;
ALTER TABLE rtc_minute ADD COLUMN fps_out_avg REAL NULL;
ALTER TABLE rtc_minute ADD COLUMN width_in INTEGER NULL;
ALTER TABLE rtc_minute ADD COLUMN height_in INTEGER NULL;
ALTER TABLE rtc_minute ADD COLUMN width_out INTEGER NULL;
ALTER TABLE rtc_minute ADD COLUMN height_out INTEGER NULL;
ALTER TABLE rtc_minute ADD COLUMN bwe_bps_avg REAL NULL;
ALTER TABLE rtc_minute ADD COLUMN remote_relayed INTEGER NULL;

ALTER TABLE rtc_hour ADD COLUMN fps_in_avg REAL NULL;
ALTER TABLE rtc_hour ADD COLUMN fps_out_avg REAL NULL;
ALTER TABLE rtc_hour ADD COLUMN bwe_bps_avg REAL NULL;
ALTER TABLE rtc_hour ADD COLUMN remote_relayed_minutes INTEGER NULL;
