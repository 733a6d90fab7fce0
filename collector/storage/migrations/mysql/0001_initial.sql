-- bwmon schema version 1 (mysql). Applied by `bwmon migrate`; never edit an applied file,
-- add a new one. Times are Unix seconds (UTC). Minute rows are complete aggregates keyed by
-- (stream, minute, segment): writing the same row again leaves the same content.

CREATE TABLE IF NOT EXISTS rtc_minute (
    meeting VARCHAR(128) NOT NULL,
    participant VARCHAR(128) NOT NULL,
    connection VARCHAR(128) NOT NULL,
    minute BIGINT NOT NULL,
    segment BIGINT NOT NULL,
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
    rtt_ms_avg DOUBLE NULL,
    audio_jitter_ms_avg DOUBLE NULL,
    video_jitter_ms_avg DOUBLE NULL,
    mos_avg DOUBLE NULL,
    mos_min DOUBLE NULL,
    quality_avg DOUBLE NULL,
    quality_min DOUBLE NULL,
    relay VARCHAR(16) NOT NULL,
    turn_server VARCHAR(512) NULL,
    relayed_bytes DOUBLE NOT NULL DEFAULT 0,
    PRIMARY KEY (meeting, participant, connection, minute, segment)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS rtc_minute_by_minute ON rtc_minute (minute);
CREATE INDEX IF NOT EXISTS rtc_minute_by_participant ON rtc_minute (participant, minute);

CREATE TABLE IF NOT EXISTS http_minute (
    service VARCHAR(128) NOT NULL,
    route VARCHAR(128) NOT NULL,
    method VARCHAR(16) NOT NULL,
    minute BIGINT NOT NULL,
    segment BIGINT NOT NULL,
    requests DOUBLE NOT NULL,
    status_1xx DOUBLE NOT NULL,
    status_2xx DOUBLE NOT NULL,
    status_3xx DOUBLE NOT NULL,
    status_4xx DOUBLE NOT NULL,
    status_5xx DOUBLE NOT NULL,
    bytes_in DOUBLE NOT NULL,
    bytes_out DOUBLE NOT NULL,
    latency_sum_ms DOUBLE NOT NULL,
    latency_hist VARCHAR(400) NOT NULL,
    p50_ms DOUBLE NULL,
    p95_ms DOUBLE NULL,
    p99_ms DOUBLE NULL,
    max_ms DOUBLE NULL,
    PRIMARY KEY (service, route, method, minute, segment)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS http_minute_by_minute ON http_minute (minute);

CREATE TABLE IF NOT EXISTS meetings (
    meeting VARCHAR(128) NOT NULL,
    started_at DOUBLE NOT NULL,
    ended_at DOUBLE NOT NULL,
    peak_participants BIGINT NOT NULL,
    bytes_up DOUBLE NOT NULL,
    bytes_down DOUBLE NOT NULL,
    relayed_bytes DOUBLE NOT NULL,
    relay_cost DOUBLE NOT NULL,
    relayed_bytes_by_turn_server VARCHAR(4000) NOT NULL,
    quality_avg DOUBLE NULL,
    quality_worst DOUBLE NULL,
    seconds_by_level VARCHAR(400) NOT NULL,
    PRIMARY KEY (meeting, started_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS meetings_by_end ON meetings (ended_at);

CREATE TABLE IF NOT EXISTS alerts (
    id VARCHAR(400) NOT NULL,
    raised_at DOUBLE NOT NULL,
    rule VARCHAR(128) NOT NULL,
    meeting VARCHAR(128) NOT NULL,
    participant VARCHAR(128) NULL,
    severity VARCHAR(16) NOT NULL,
    value DOUBLE NULL,
    threshold DOUBLE NOT NULL,
    cleared_at DOUBLE NULL,
    PRIMARY KEY (id, raised_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS alerts_by_meeting ON alerts (meeting, raised_at);
