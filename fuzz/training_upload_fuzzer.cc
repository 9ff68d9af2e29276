// A StartFineTune upload stream as the Training service reads it: protobuf-delimited
// dino.v1.FineTuneUpload messages (a varint length before each, as
// google::protobuf::util::SerializeDelimitedToOstream writes them), the first one the config.
// The config goes through SpecFromWire and FineTuneJobManager::Create against the small
// served models, each batch through BatchFromWire and FineTuneJob::AddBatch (shapes against
// the base model, the Jacobian form, finiteness, orthonormal SVD factors, the per-job caps).
// The upload is then abandoned: training and publishing are the fine-tune tests' business, and
// each fuzz input must end in microseconds.
#include <google/protobuf/io/coded_stream.h>

#include <cstdint>
#include <memory>

#include "fuzz/served_models.h"
#include "server/frontend/training_service.h"
#include "server/training/fine_tune_jobs.h"

namespace {

dino::serving::FineTuneJobManager& Jobs() {
  static auto* jobs = [] {
    dino::serving::FineTuneJobManager::Options options;
    options.repository = dino::fuzz::Served().repository.path();
    options.max_samples_per_job = 64;
    options.max_bytes_per_job = 64 << 10;
    options.finished_jobs_kept = 4;
    return new dino::serving::FineTuneJobManager(*dino::fuzz::Served().manager, options);
  }();
  return *jobs;
}

// The next delimited message of `in` into `message`; false at the end or on malformed bytes.
bool ReadDelimited(google::protobuf::io::CodedInputStream* in, dino::v1::FineTuneUpload* message) {
  uint32_t length = 0;
  if (!in->ReadVarint32(&length)) return false;
  const auto limit = in->PushLimit(static_cast<int>(length));
  const bool parsed = message->ParseFromCodedStream(in) && in->ConsumedEntireMessage();
  in->PopLimit(limit);
  return parsed;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  google::protobuf::io::CodedInputStream in(data, static_cast<int>(size));
  dino::v1::FineTuneUpload message;
  if (!ReadDelimited(&in, &message) || !message.has_config()) return 0;
  auto spec = dino::frontend::SpecFromWire(message.config());
  if (!spec.ok()) return 0;
  auto job = Jobs().Create(*std::move(spec));
  if (!job.ok()) return 0;
  int64_t accepted = 0;
  while (ReadDelimited(&in, &message) && message.has_samples()) {
    auto batch = dino::frontend::BatchFromWire(message.samples());
    if (!batch.ok()) break;
    const int64_t rows = batch->data.m.dim() >= 1 ? batch->data.m.size(0) : 0;
    if (!(*job)->AddBatch(*std::move(batch)).ok()) break;
    accepted += rows;
  }
  const dino::serving::JobSnapshot snapshot = (*job)->Snapshot();
  Require(snapshot.samples_received == accepted,
          "the job counts other samples than the batches it accepted");
  Require(snapshot.samples_received <= 64, "the job holds more samples than its cap");
  (*job)->AbortUpload("the fuzz input ended");
  return 0;
}
