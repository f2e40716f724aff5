-- wrk script: POST /v1/orders with a new request id every time, so each request runs a
-- real order saga (a repeated id would only replay the first answer).
-- wrk ... -s bench/orders.lua <url> -- <run prefix> <token> <sku>
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  prefix, token, sku = args[1] .. "-" .. id .. "-", args[2], args[3]
  counter = 0
end

function request()
  counter = counter + 1
  local body = '{"request_id":"' .. prefix .. counter .. '","line_items":[{"sku":"' .. sku .. '","quantity":1}]}'
  return wrk.format("POST", "/v1/orders", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
