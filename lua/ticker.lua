-- ticker.lua -- a 1 ms ticker coroutine next to 20 coroutines that each make
-- five 30 ms blocking C calls (usleep through vmown.threaded), then a C
-- callback from a foreign thread.  Prints key=value figures, one a line.
--
-- Usage: lua5.4 ticker.lua [SLEEPERS] [CALLS] [CALL_US]
-- (LUA_CPATH must find vmown.so; `make -C lua check` builds it and runs this.)
local vmown = require "vmown"

local sleepers = tonumber(arg[1]) or 20
local calls = tonumber(arg[2]) or 5
local call_us = tonumber(arg[3]) or 30000
local usleep = vmown.threaded(vmown.c.usleep)

local tick_s = 0.001
local ticks, worst_late_s, late_sum_s = 0, 0, 0
local blocked_s, callback = 0, nil
local threads = {}

local figures = vmown.run(function()
  local running = true
  vmown.spawn(function()  -- the ticker: wakes every ms, measures how late
    local deadline = vmown.now() + tick_s
    while running do
      vmown.sleep(deadline - vmown.now())
      local late = vmown.now() - deadline
      ticks, late_sum_s = ticks + 1, late_sum_s + late
      if late > worst_late_s then worst_late_s = late end
      deadline = vmown.now() + tick_s
    end
  end)
  local left = sleepers
  local start = vmown.now()
  for _ = 1, sleepers do
    vmown.spawn(function()
      for _ = 1, calls do
        threads[vmown.thread_id()] = true
        local rc = usleep(call_us)
        assert(rc == 0, "usleep failed")
      end
      left = left - 1
    end)
  end
  while left > 0 do vmown.sleep(0.002) end
  blocked_s = vmown.now() - start
  -- A C library's thread calls back into Lua: it must own the VM meanwhile.
  callback = {vmown.call_from_foreign_thread(function(x)
    return vmown.owns(), vmown.thread_id(), x * 2
  end, 21)}
  running = false
end)

local nthreads = 0
for _ in pairs(threads) do nthreads = nthreads + 1 end
print(("sleepers=%d calls=%d call_us=%d"):format(sleepers, calls, call_us))
print(("serial_s=%.3f"):format(sleepers * calls * call_us / 1e6))
print(("blocking_part_s=%.3f"):format(blocked_s))
print(("run_s=%.3f"):format(figures.elapsed_ns / 1e9))
print(("ticks=%d"):format(ticks))
print(("ticker_worst_late_ms=%.3f"):format(worst_late_s * 1e3))
print(("ticker_mean_late_ms=%.3f"):format(ticks > 0 and late_sum_s / ticks * 1e3 or 0))
print(("os_threads_ran_calls=%d"):format(nthreads))
for _, k in ipairs({"activations", "revocations", "starved", "workers_started", "steps"}) do
  print(("%s=%d"):format(k, figures[k]))
end
print(("callback_owned=%s"):format(tostring(callback[1])))
print(("callback_foreign_thread=%s"):format(tostring(callback[2] ~= nil and threads[callback[2]] == nil)))
print(("callback_result=%d"):format(callback[3]))
