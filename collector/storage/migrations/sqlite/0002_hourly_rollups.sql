-- bwmon schema version 2 (sqlite): hourly rollups. Minute rows older than
-- storage.minute_retention_days are summed into these, then deleted (retention).

CREATE TABLE IF NOT EXISTS rtc_hour (
    meeting TEXT NOT NULL,
    participant TEXT NOT NULL,
    connection TEXT NOT NULL,
    hour INTEGER NOT NULL,
    minutes INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    gaps INTEGER NOT NULL,
    resets INTEGER NOT NULL,
    audio_bytes_sent REAL NOT NULL DEFAULT 0,
    audio_packets_sent REAL NOT NULL DEFAULT 0,
    audio_bytes_received REAL NOT NULL DEFAULT 0,
    audio_packets_received REAL NOT NULL DEFAULT 0,
    audio_packets_lost REAL NOT NULL DEFAULT 0,
    audio_remote_packets_lost REAL NOT NULL DEFAULT 0,
    video_bytes_sent REAL NOT NULL DEFAULT 0,
    video_packets_sent REAL NOT NULL DEFAULT 0,
    video_bytes_received REAL NOT NULL DEFAULT 0,
    video_packets_received REAL NOT NULL DEFAULT 0,
    video_packets_lost REAL NOT NULL DEFAULT 0,
    video_remote_packets_lost REAL NOT NULL DEFAULT 0,
    jitter_buffer_delay_s REAL NOT NULL DEFAULT 0,
    jitter_buffer_emitted REAL NOT NULL DEFAULT 0,
    concealed_samples REAL NOT NULL DEFAULT 0,
    silent_concealed_samples REAL NOT NULL DEFAULT 0,
    total_samples_received REAL NOT NULL DEFAULT 0,
    frames_decoded REAL NOT NULL DEFAULT 0,
    frames_dropped REAL NOT NULL DEFAULT 0,
    freeze_count REAL NOT NULL DEFAULT 0,
    freeze_duration_s REAL NOT NULL DEFAULT 0,
    pair_bytes_sent REAL NOT NULL DEFAULT 0,
    pair_bytes_received REAL NOT NULL DEFAULT 0,
    mos_avg REAL NULL,
    mos_min REAL NULL,
    quality_avg REAL NULL,
    quality_min REAL NULL,
    relayed_bytes REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (meeting, participant, connection, hour)
);
CREATE INDEX IF NOT EXISTS rtc_hour_by_hour ON rtc_hour (hour);

CREATE TABLE IF NOT EXISTS http_hour (
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    hour INTEGER NOT NULL,
    requests REAL NOT NULL,
    status_1xx REAL NOT NULL,
    status_2xx REAL NOT NULL,
    status_3xx REAL NOT NULL,
    status_4xx REAL NOT NULL,
    status_5xx REAL NOT NULL,
    bytes_in REAL NOT NULL,
    bytes_out REAL NOT NULL,
    latency_sum_ms REAL NOT NULL,
    p95_ms_max REAL NULL,
    PRIMARY KEY (service, route, method, hour)
);
CREATE INDEX IF NOT EXISTS http_hour_by_hour ON http_hour (hour);
