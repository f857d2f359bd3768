-- wrk script: GET /orders/{id} over the order ids in the file $IDS (one per line), round robin.
-- Each connection waits PACE_MS (default 4) between requests: 12 connections offer about 2,000
-- requests/s on this machine (closed loop: a slow answer delays the next, so this understates
-- tail latency under a truly open load). PACE_MS=0: as fast as the connections go.
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
local pace = tonumber(os.getenv("PACE_MS") or "4")
local i = 0
request = function()
  i = i % #ids + 1
  return wrk.format("GET", "/orders/" .. ids[i])
end
delay = function() return pace end
