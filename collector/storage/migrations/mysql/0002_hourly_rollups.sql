-- bwmon schema version 2 (mysql): hourly rollups. Minute rows older than
-- storage.minute_retention_days are summed into these, then deleted (retention).

CREATE TABLE IF NOT EXISTS rtc_hour (
    meeting VARCHAR(128) NOT NULL,
    participant VARCHAR(128) NOT NULL,
    connection VARCHAR(128) NOT NULL,
    hour BIGINT NOT NULL,
    minutes BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    gaps BIGINT NOT NULL,
    resets BIGINT NOT NULL,
    audio_bytes_sent DOUBLE NOT NULL DEFAULT 0,
    audio_packets_sent DOUBLE NOT NULL DEFAULT 0,
    audio_bytes_received DOUBLE NOT NULL DEFAULT 0,
    audio_packets_received DOUBLE NOT NULL DEFAULT 0,
    audio_packets_lost DOUBLE NOT NULL DEFAULT 0,
    audio_remote_packets_lost DOUBLE NOT NULL DEFAULT 0,
    video_bytes_sent DOUBLE NOT NULL DEFAULT 0,
    video_packets_sent DOUBLE NOT NULL DEFAULT 0,
    video_bytes_received DOUBLE NOT NULL DEFAULT 0,
    video_packets_received DOUBLE NOT NULL DEFAULT 0,
    video_packets_lost DOUBLE NOT NULL DEFAULT 0,
    video_remote_packets_lost DOUBLE NOT NULL DEFAULT 0,
    jitter_buffer_delay_s DOUBLE NOT NULL DEFAULT 0,
    jitter_buffer_emitted DOUBLE NOT NULL DEFAULT 0,
    concealed_samples DOUBLE NOT NULL DEFAULT 0,
    silent_concealed_samples DOUBLE NOT NULL DEFAULT 0,
    total_samples_received DOUBLE NOT NULL DEFAULT 0,
    frames_decoded DOUBLE NOT NULL DEFAULT 0,
    frames_dropped DOUBLE NOT NULL DEFAULT 0,
    freeze_count DOUBLE NOT NULL DEFAULT 0,
    freeze_duration_s DOUBLE NOT NULL DEFAULT 0,
    pair_bytes_sent DOUBLE NOT NULL DEFAULT 0,
    pair_bytes_received DOUBLE NOT NULL DEFAULT 0,
    mos_avg DOUBLE NULL,
    mos_min DOUBLE NULL,
    quality_avg DOUBLE NULL,
    quality_min DOUBLE NULL,
    relayed_bytes DOUBLE NOT NULL DEFAULT 0,
    PRIMARY KEY (meeting, participant, connection, hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS rtc_hour_by_hour ON rtc_hour (hour);

CREATE TABLE IF NOT EXISTS http_hour (
    service VARCHAR(128) NOT NULL,
    route VARCHAR(128) NOT NULL,
    method VARCHAR(16) NOT NULL,
    hour BIGINT NOT NULL,
    requests DOUBLE NOT NULL,
    status_1xx DOUBLE NOT NULL,
    status_2xx DOUBLE NOT NULL,
    status_3xx DOUBLE NOT NULL,
    status_4xx DOUBLE NOT NULL,
    status_5xx DOUBLE NOT NULL,
    bytes_in DOUBLE NOT NULL,
    bytes_out DOUBLE NOT NULL,
    latency_sum_ms DOUBLE NOT NULL,
    p95_ms_max DOUBLE NULL,
    PRIMARY KEY (service, route, method, hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS http_hour_by_hour ON http_hour (hour);
