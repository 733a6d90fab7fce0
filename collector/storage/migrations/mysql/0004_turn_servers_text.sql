-- bwmon schema version 4 (mysql): a meeting's relayed bytes per TURN server as MEDIUMTEXT. One
-- entry per server, whose URL may have 512 code points (PROTOCOL.md §4.3) written as up to 12
-- characters each in JSON: eight servers could overflow the VARCHAR(4000) of version 1, and the
-- server refused the meeting's row.

ALTER TABLE meetings MODIFY relayed_bytes_by_turn_server MEDIUMTEXT NOT NULL;
