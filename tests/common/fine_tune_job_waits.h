// Waiting for a fine-tune job to end, as the tests and benchmarks of the training endpoint do.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "server/training/fine_tune_jobs.h"

namespace dino::testing {

// The job's snapshot once it has ended (succeeded, failed or cancelled); the manager's error
// when the job is unknown; DEADLINE_EXCEEDED when a single wait for a change lasts longer
// than `seconds_per_change`.
inline absl::StatusOr<serving::JobSnapshot> WaitUntilEnded(serving::FineTuneJobManager& jobs,
                                                           const std::string& id,
                                                           double seconds_per_change) {
  int64_t revision = 0;
  while (true) {
    auto snapshot = jobs.WaitForChange(id, revision, seconds_per_change);
    if (!snapshot.ok() || serving::IsFinal(snapshot->state)) return snapshot;
    if (snapshot->revision == revision) {
      return absl::DeadlineExceededError("fine-tune job " + id + " did not change in time");
    }
    revision = snapshot->revision;
  }
}

}  // namespace dino::testing
