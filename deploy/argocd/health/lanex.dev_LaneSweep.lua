-- Argo CD health of a lanex LaneSweep
-- (argocd-cm: resource.customizations.health.lanex.dev_LaneSweep).
-- The operator summarises the sweep's dataset and trials in status; read here:
--   Succeeded -> Healthy with the best trial and its objective, and the trial counts;
--   Failed -> Degraded with the Failed condition's reason and message;
--   any other phase -> Progressing with the phase, the trials finished and running, the best so far;
--   no status yet, or a generation the operator has not observed -> Progressing.
-- An ignored spec change (a sweep keeps the spec it started with) is appended as a warning.
-- Argo CD runs this without Lua's standard libraries: only base functions and `table`.
local hs = {}

local function find_condition(conditions, condition_type)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local text = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local function with_warnings(message, conditions)
  local ignored = find_condition(conditions, "SpecChangeIgnored")
  if ignored ~= nil and ignored.status == "True" then
    return message .. " (warning: SpecChangeIgnored " .. describe(ignored) .. ")"
  end
  return message
end

-- 0.95234 -> "0.9523" (no string or math library: plain arithmetic only).
local function decimal(value)
  local scaled = value * 10000 + 0.5
  scaled = scaled - scaled % 1
  return tostring(scaled / 10000)
end

-- "4 succeeded, 1 stopped, 1 failed" (counts that are 0 left out)
local function tally(counts, keys)
  local parts = {}
  if counts ~= nil then
    for _, key in ipairs(keys) do
      if counts[key] ~= nil and counts[key] > 0 then
        table.insert(parts, counts[key] .. " " .. key)
      end
    end
  end
  return table.concat(parts, ", ")
end

local function best(status)
  local trial = status.bestTrial
  if trial == nil or trial.name == nil then
    return nil
  end
  local text = "best " .. trial.name
  if trial.objective ~= nil then
    text = text .. " (" .. decimal(trial.objective) .. ")"
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local conditions = status.conditions
local phase = status.phase
local trials = status.trialCount or 0

if phase == "Succeeded" then
  hs.status = "Healthy"
  local message = "Succeeded"
  local top = best(status)
  if top ~= nil then
    message = message .. ": " .. top
  end
  local counted = tally(status.counts, { "succeeded", "stopped", "failed" })
  if counted ~= "" then
    message = message .. "; " .. trials .. " trials: " .. counted
  end
  hs.message = with_warnings(message, conditions)
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local failed = find_condition(conditions, "Failed")
  if failed ~= nil and failed.status == "True" then
    hs.message = with_warnings("Failed: " .. describe(failed), conditions)
  else
    hs.message = with_warnings("Failed: " .. (status.reason or "Unknown") .. ": " .. (status.message or ""), conditions)
  end
  return hs
end

hs.status = "Progressing"
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = with_warnings(phase .. ": waiting for the operator to observe generation " .. generation, conditions)
  return hs
end
local message = phase
if phase == "Running" then
  local counts = status.counts or {}
  local finished = (counts.succeeded or 0) + (counts.failed or 0) + (counts.stopped or 0)
  message = message .. ": " .. finished .. "/" .. trials .. " trials finished, " .. (counts.running or 0) .. " running"
  local top = best(status)
  if top ~= nil then
    message = message .. ", " .. top
  end
elseif status.message ~= nil and status.message ~= "" then
  message = message .. ": " .. status.message
end
hs.message = with_warnings(message, conditions)
return hs
