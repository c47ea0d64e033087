-- Argo CD health of a lanex LaneExperiment
-- (argocd-cm: resource.customizations.health.lanex.dev_LaneExperiment).
-- Argo CD does not look at an experiment's children (PVC, Job, MPIJob, VolumeSnapshot): the
-- operator surfaces them in status.phase, status.conditions and status.message, read here.
--   Succeeded -> Healthy; Failed -> Degraded with the Failed condition's reason and message;
--   Stopped (a sweep's early stopping, on purpose) -> Healthy with the reason;
--   any other phase -> Progressing with the phase; no status yet -> Progressing.
-- Operator warnings (a failed storage-tier move, an ignored spec change, a stalled training) are
-- appended; a training experiment's message leads with its progress and ETA (the printer columns).
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

-- Warnings that do not stop the experiment, as "Type: reason: message".
local function warnings(conditions)
  local notes = {}
  local tier = find_condition(conditions, "StorageTier")
  if tier ~= nil and tier.status == "False" then
    table.insert(notes, "StorageTier " .. describe(tier))
  end
  local ignored = find_condition(conditions, "SpecChangeIgnored")
  if ignored ~= nil and ignored.status == "True" then
    table.insert(notes, "SpecChangeIgnored " .. describe(ignored))
  end
  local stalled = find_condition(conditions, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    table.insert(notes, "Stalled " .. describe(stalled))
  end
  return notes
end

local function with_warnings(message, conditions)
  local notes = warnings(conditions)
  if #notes == 0 then
    return message
  end
  return message .. " (warning: " .. table.concat(notes, "; ") .. ")"
end

-- 0.95234 -> "95.23%" (Argo CD opens no string or math library: plain arithmetic only).
local function percent(fraction)
  local hundredths = fraction * 10000 + 0.5
  hundredths = hundredths - hundredths % 1
  return tostring(hundredths / 100) .. "%"
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local conditions = status.conditions
local phase = status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  local message = "Succeeded"
  if status.results ~= nil and status.results.accuracy ~= nil then
    message = message .. ": TuSimple accuracy " .. percent(status.results.accuracy)
  end
  if status.provenance ~= nil and status.provenance.resultSnapshot ~= nil then
    message = message .. ", snapshot " .. status.provenance.resultSnapshot
  end
  hs.message = with_warnings(message, conditions)
  return hs
end

if phase == "Stopped" then
  hs.status = "Healthy"
  hs.message = with_warnings("Stopped: " .. (status.reason or "Stopped") .. ": " .. (status.message or ""), conditions)
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local failed = find_condition(conditions, "Failed")
  if failed ~= nil then
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
if phase == "Training" and status.progressSummary ~= nil then
  message = message .. " " .. status.progressSummary
  if status.eta ~= nil then
    message = message .. ", ETA " .. status.eta
  end
end
if status.message ~= nil and status.message ~= "" then
  message = message .. ": " .. status.message
end
hs.message = with_warnings(message, conditions)
return hs
