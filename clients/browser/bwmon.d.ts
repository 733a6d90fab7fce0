// Types of bwmon.js (the browser client). One section per section of bwmon.js.

// ---- quality ----

// ---- monitor ----

// ---- indicator ----
