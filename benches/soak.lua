-- benches/soak.sh: every request from a new client (random X-Forwarded-For) to
-- /hello or to one of a million /items/{id}.
math.randomseed(os.time())
request = function()
  local ip = math.random(1, 223) .. "." .. math.random(0, 255) .. "."
    .. math.random(0, 255) .. "." .. math.random(1, 254)
  local path = "/hello"
  if math.random() < 0.5 then
    path = "/items/" .. math.random(1, 1000000)
  end
  return wrk.format("GET", path, { ["X-Forwarded-For"] = ip, ["Host"] = "localhost" })
end
