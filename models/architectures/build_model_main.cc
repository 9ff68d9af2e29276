// dino-build-model: builds an untrained model with the project's architectures (random
// Glorot weights; for DIPNets random orthonormal bases) and writes it into a model
// repository as <repository>/<name>/<version>/model.pt. It produced the bundled default model
// until a trained one replaces it, and it makes the models the tests serve.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "models/architectures/architectures.h"
#include "models/architectures/model_file.h"

ABSL_FLAG(std::string, repository, "", "Model repository folder (required).");
ABSL_FLAG(std::string, name, "", "Model name (required).");
ABSL_FLAG(int64_t, version, 1, "Version number (>= 1).");
ABSL_FLAG(std::string, architecture, "dipnet", "dipnet or generic.");
ABSL_FLAG(int64_t, input_dim, 4225, "d_M.");
ABSL_FLAG(int64_t, output_dim, 50, "d_Q.");
ABSL_FLAG(int64_t, input_rank, 100, "r_M (dipnet).");
ABSL_FLAG(int64_t, output_rank, 50, "r_Q (dipnet).");
ABSL_FLAG(std::string, hidden, "50,50,50,50,50,50", "Hidden layer widths, comma separated.");
ABSL_FLAG(std::string, dtype, "fp64", "fp32 or fp64.");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the weights and bases.");
ABSL_FLAG(std::string, description, "", "Free text stored in the metadata.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Builds an untrained DINO model and writes it into a model repository.");
  absl::ParseCommandLine(argc, argv);
  namespace dm = dino::models;
  try {
    const std::string repository = absl::GetFlag(FLAGS_repository);
    const std::string name = absl::GetFlag(FLAGS_name);
    const int64_t version = absl::GetFlag(FLAGS_version);
    if (repository.empty() || name.empty()) {
      throw std::invalid_argument("--repository and --name are required");
    }
    if (version < 1) throw std::invalid_argument("--version must be >= 1");
    const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
    if (dtype_name != "fp32" && dtype_name != "fp64") {
      throw std::invalid_argument("--dtype must be fp32 or fp64");
    }
    const torch::Dtype dtype = dtype_name == "fp32" ? torch::kFloat32 : torch::kFloat64;
    const std::string architecture = absl::GetFlag(FLAGS_architecture);
    const uint64_t seed = absl::GetFlag(FLAGS_seed);
    const int64_t d_m = absl::GetFlag(FLAGS_input_dim), d_q = absl::GetFlag(FLAGS_output_dim);
    const std::vector<int64_t> hidden = dm::ParseHiddenWidths(absl::GetFlag(FLAGS_hidden));

    nlohmann::json metadata = {
        {"architecture", architecture},
        {"trained", false},
        {"dtype", dtype_name},
        {"input_dim", d_m},
        {"output_dim", d_q},
        {"hidden_widths", hidden},
        {"seed", seed},
        {"provenance",
         {{"created_by", "dino-build-model"}, {"note", "random weights; not trained on any data"}}},
    };
    if (!absl::GetFlag(FLAGS_description).empty()) {
      metadata["description"] = absl::GetFlag(FLAGS_description);
    }
    torch::jit::Module module;
    if (architecture == dm::kDipnetArchitecture) {
      const int64_t r_m = absl::GetFlag(FLAGS_input_rank);
      const int64_t r_q = absl::GetFlag(FLAGS_output_rank);
      dm::DipnetSpec spec;
      // Distinct seeds for the two bases and the weights.
      spec.input_basis = dm::RandomOrthonormalColumns(d_m, r_m, seed * 3 + 1);
      spec.output_basis = dm::RandomOrthonormalColumns(d_q, r_q, seed * 3 + 2);
      spec.output_shift = torch::zeros({d_q}, torch::kFloat64);
      spec.hidden_widths = hidden;
      spec.dtype = dtype;
      spec.seed = seed * 3 + 3;
      metadata["input_rank"] = r_m;
      metadata["output_rank"] = r_q;
      metadata["provenance"]["bases"] = "random orthonormal (QR of a Gaussian matrix)";
      module = dm::BuildDipnet(spec);
    } else if (architecture == dm::kGenericArchitecture) {
      dm::GenericDenseSpec spec;
      spec.input_dim = d_m;
      spec.output_dim = d_q;
      spec.hidden_widths = hidden;
      spec.dtype = dtype;
      spec.seed = seed;
      module = dm::BuildGenericDense(spec);
    } else {
      throw std::invalid_argument("--architecture must be dipnet or generic, got '" + architecture +
                                  "'");
    }
    metadata["parameters"] = dm::CountParameters(module);
    const std::string path = repository + "/" + name + "/" + std::to_string(version) + "/model.pt";
    dm::SaveModelFile(module, metadata, path);
    std::cout << "wrote " << path << " (" << architecture << ", " << dm::CountParameters(module)
              << " parameters)\n";
  } catch (const std::exception& e) {
    std::cerr << "dino-build-model: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
