-- bwmon schema version 1 (sqlite). Applied by `bwmon migrate`; never edit an applied file,
-- add a new one. Times are Unix seconds (UTC). Minute rows are complete aggregates keyed by
-- (stream, minute, segment): writing the same row again leaves the same content.

CREATE TABLE IF NOT EXISTS rtc_minute (
    meeting TEXT NOT NULL,
    participant TEXT NOT NULL,
    connection TEXT NOT NULL,
    minute INTEGER NOT NULL,
    segment INTEGER NOT NULL,
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
    rtt_ms_avg REAL NULL,
    audio_jitter_ms_avg REAL NULL,
    video_jitter_ms_avg REAL NULL,
    mos_avg REAL NULL,
    mos_min REAL NULL,
    quality_avg REAL NULL,
    quality_min REAL NULL,
    relay TEXT NOT NULL,
    turn_server TEXT NULL,
    relayed_bytes REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (meeting, participant, connection, minute, segment)
);
CREATE INDEX IF NOT EXISTS rtc_minute_by_minute ON rtc_minute (minute);
CREATE INDEX IF NOT EXISTS rtc_minute_by_participant ON rtc_minute (participant, minute);

CREATE TABLE IF NOT EXISTS http_minute (
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    minute INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    requests REAL NOT NULL,
    status_1xx REAL NOT NULL,
    status_2xx REAL NOT NULL,
    status_3xx REAL NOT NULL,
    status_4xx REAL NOT NULL,
    status_5xx REAL NOT NULL,
    bytes_in REAL NOT NULL,
    bytes_out REAL NOT NULL,
    latency_sum_ms REAL NOT NULL,
    latency_hist TEXT NOT NULL,
    p50_ms REAL NULL,
    p95_ms REAL NULL,
    p99_ms REAL NULL,
    max_ms REAL NULL,
    PRIMARY KEY (service, route, method, minute, segment)
);
CREATE INDEX IF NOT EXISTS http_minute_by_minute ON http_minute (minute);

CREATE TABLE IF NOT EXISTS meetings (
    meeting TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    peak_participants INTEGER NOT NULL,
    bytes_up REAL NOT NULL,
    bytes_down REAL NOT NULL,
    relayed_bytes REAL NOT NULL,
    relay_cost REAL NOT NULL,
    relayed_bytes_by_turn_server TEXT NOT NULL,
    quality_avg REAL NULL,
    quality_worst REAL NULL,
    seconds_by_level TEXT NOT NULL,
    PRIMARY KEY (meeting, started_at)
);
CREATE INDEX IF NOT EXISTS meetings_by_end ON meetings (ended_at);

CREATE TABLE IF NOT EXISTS alerts (
    id TEXT NOT NULL,
    raised_at REAL NOT NULL,
    rule TEXT NOT NULL,
    meeting TEXT NOT NULL,
    participant TEXT NULL,
    severity TEXT NOT NULL,
    value REAL NULL,
    threshold REAL NOT NULL,
    cleared_at REAL NULL,
    PRIMARY KEY (id, raised_at)
);
CREATE INDEX IF NOT EXISTS alerts_by_meeting ON alerts (meeting, raised_at);
